"""The one retry policy: how often and how long to wait, for HTTP and everything else.

:class:`RetryPolicy` holds the settings (``--retries``, ``--backoff``, the cap) and the
schedule: retry ``n`` (1-based) waits ``base * 2**(n-1)`` seconds, ±25 % jitter, at most
``cap``; a server's ``Retry-After`` replaces that wait (also at most ``cap``).
Two engines run it, both well-kept libraries:

* HTTP: :meth:`RetryPolicy.http_retry` gives a urllib3 ``Retry`` (status list,
  connection and read errors, ``Retry-After``) for a ``PoolManager`` request;
  ``services.common.httpfetch`` uses it.
* Anything else (a whole archive copy): :meth:`RetryPolicy.call` runs a function under
  tenacity with the same schedule.

Example:
    >>> policy = RetryPolicy(retries=2, base=1.0, sleep=lambda s: None)
    >>> 0.75 <= policy.delay(1) <= 1.25, 1.5 <= policy.delay(2) <= 2.5
    (True, True)
    >>> policy.delay(3, retry_after=120.0), policy.delay(5000)
    (30.0, 30.0)
    >>> calls = []
    >>> def flaky() -> str:
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise ConnectionError("reset")
    ...     return "done"
    >>> policy.call(flaky, attempts=3, retry_on=lambda e: isinstance(e, ConnectionError))
    'done'
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import tenacity
from urllib3.exceptions import InvalidHeader
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

T = TypeVar("T")

# Statuses worth another try: timeout, too early, too many requests, server errors.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 10  # followed without using up retries

# on_retry(what went wrong, retry number (1-based), seconds about to be waited)
OnRetry = Callable[[str, int, float], None]


@dataclass
class RetryPolicy:
    """Retries (after the first attempt) and the wait before each."""

    retries: int = 4
    base: float = 0.5
    cap: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds before retry number ``retry`` (1-based); ``Retry-After`` wins, capped."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap)
        doublings = min(max(retry - 1, 0), 64)  # past the cap anyway; no float overflow
        wait = self.base * 2**doublings * (0.75 + self.rng.random() / 2)
        return min(wait, self.cap)

    def http_retry(self, on_retry: OnRetry | None = None) -> PolicyRetry:
        """A urllib3 ``Retry`` for one request under this policy (fresh per request)."""
        return PolicyRetry.for_policy(self, on_retry)

    def call(
        self,
        fn: Callable[[], T],
        *,
        attempts: int,
        retry_on: Callable[[BaseException], bool],
        on_retry: OnRetry | None = None,
    ) -> T:
        """``fn()``, tried up to ``attempts`` times while ``retry_on(error)`` holds.

        The last error is raised as it is (not wrapped); waits follow :meth:`delay`.
        """

        def wait(state: tenacity.RetryCallState) -> float:
            return self.delay(state.attempt_number)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None and state.next_action:
                error = state.outcome.exception()
                on_retry(str(error), state.attempt_number, state.next_action.sleep)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, attempts)),
            wait=wait,
            retry=tenacity.retry_if_exception(retry_on),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(fn)


class PolicyRetry(Retry):
    """urllib3's ``Retry`` on a :class:`RetryPolicy`: one budget of ``retries`` for
    transient statuses, connection and read errors (redirects are not counted), the
    policy's waits through its ``sleep``, and a hook told of each retry.

    urllib3 decides what is retried (``status_forcelist``, idempotent methods, connect
    and read errors, ``Retry-After`` parsing); this class only sets the schedule.
    """

    policy: RetryPolicy
    on_retry: OnRetry | None
    done: list[int]  # shared by the copies urllib3 makes: retries done so far

    @classmethod
    def for_policy(cls, policy: RetryPolicy, on_retry: OnRetry | None = None) -> PolicyRetry:
        retry = cls(
            total=None,
            connect=None,
            read=None,
            status=None,
            other=None,
            redirect=MAX_REDIRECTS,
            status_forcelist=TRANSIENT_STATUSES,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last answer is returned; the caller raises
        )
        retry.policy, retry.on_retry, retry.done = policy, on_retry, [0]
        return retry

    def new(self, **kw: Any) -> Self:
        copy = super().new(**kw)
        copy.policy, copy.on_retry, copy.done = self.policy, self.on_retry, self.done
        return copy

    def failures(self) -> int:
        """Retries used so far (redirects not counted)."""
        return sum(1 for h in self.history if h.redirect_location is None)

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or self.failures() > self.policy.retries

    def get_backoff_time(self) -> float:
        return self.policy.delay(self.failures())

    def sleep_for_retry(self, response: BaseHTTPResponse) -> bool:
        return False  # redirects are followed at once; waits happen in sleep()

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        retry_after: float | None = None
        if response is not None:
            try:
                retry_after = self.get_retry_after(response)
            except InvalidHeader:
                retry_after = None  # a malformed Retry-After: the usual backoff
        delay = self.policy.delay(self.failures(), retry_after)
        self.done[0] += 1
        if self.on_retry is not None:
            last = self.history[-1]
            what = f"HTTP {last.status}" if last.error is None else _describe(last.error)
            self.on_retry(what, self.done[0], delay)
        self.policy.sleep(delay)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
