"""Wait for a submitted Beam job (Dataflow or local) to finish, with a deadline.

The job id is logged as soon as the runner knows it; the wait polls in slices so a
deadline can be enforced; a job still running at the deadline is cancelled and the run
fails. Any terminal state other than DONE fails the run.

Polling reads the result's ``state`` (Dataflow and the portable runners ask their job
service each time) and sleeps between looks; ``wait_until_finish()`` is called once, when
the job is DONE, to collect the runner's own verdict. A portable runner's
``wait_until_finish(duration)`` cannot be called twice (its second call fails with
"generator already executing" while the first call's stream readers still run), so it is
used only for results without a ``state``.

Stopped while waiting (SIGTERM/SIGINT, see ``services/common/lifecycle.py``): a job with a
runner job id (Dataflow; local runners have none and end with the process) is asked to
cancel before the abort goes on, and the launcher logs ``dataflow_job_cancel_requested``
or ``dataflow_job_cancel_failed``. The request is bounded (``cancel_timeout_s``, 20 s by
default) so the pod still exits inside Kubernetes' 30 s grace period.

Example:
    >>> class Done:
    ...     def wait_until_finish(self, duration=None): return "DONE"
    >>> wait_for_job(Done(), deadline_s=10, log=None)
    'DONE'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from services.common import lifecycle
from services.common.logsetup import get_logger

TERMINAL_OK = frozenset({"DONE"})
TERMINAL_BAD = frozenset({"FAILED", "CANCELLED", "DRAINED", "UPDATED", "STOPPED"})
CANCEL_TIMEOUT_S = 20.0


class JobFailed(RuntimeError):
    """The Beam job ended in a state other than DONE, or missed its deadline."""


def _state_name(state: Any) -> str:
    text = str(state)
    return text.rsplit(".", 1)[-1].upper()


def job_id(result: Any) -> str | None:
    """The runner's job id (Dataflow), or None for local runners."""
    getter = getattr(result, "job_id", None)
    try:
        value = getter() if callable(getter) else None
    except Exception:
        return None
    return None if value is None or value == "" else str(value)


def request_cancel(result: Any, timeout_s: float) -> tuple[str | None, str | None]:
    """Call ``result.cancel()`` for at most ``timeout_s``; return (state, error).

    The call runs in a daemon thread: a Dataflow API that does not answer cannot hold the
    process past the timeout. Signals arriving meanwhile are handled by the main thread.
    """
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["state"] = result.cancel()
        except BaseException as exc:  # reported to the caller, never raised in the thread
            box["error"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=call, name="beam-job-cancel", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return None, f"no answer within {timeout_s:g} s"
    if "error" in box:
        return None, str(box["error"])
    state = box.get("state")
    return (None if state is None else _state_name(state)), None


def _stopping(exc: BaseException) -> bool:
    """The wait ended because the process is being stopped (not because the job ended or
    missed its deadline, which is already cancelled)."""
    if isinstance(exc, JobFailed):
        return False
    return isinstance(exc, lifecycle.Aborted | KeyboardInterrupt) or bool(lifecycle.requested())


def _cancel_on_stop(result: Any, jid: str, log: Any, timeout_s: float) -> None:
    started = time.monotonic()
    signame = lifecycle.requested() or "SIGINT"
    state, error = request_cancel(result, timeout_s)
    seconds = round(time.monotonic() - started, 3)
    if error is None:
        log.warning(
            "dataflow_job_cancel_requested",
            job_id=jid,
            signal=signame,
            state=state,
            seconds=seconds,
        )
    else:
        log.error(
            "dataflow_job_cancel_failed",
            job_id=jid,
            signal=signame,
            error=error,
            seconds=seconds,
            hint="the job may still be running: cancel it in the Dataflow console",
        )


def _poll(result: Any, slice_s: float) -> str:
    """The job's state after waiting up to ``slice_s`` seconds for it to end."""
    if not hasattr(type(result), "state"):  # no job-service state: wait in slices
        return _state_name(result.wait_until_finish(duration=int(slice_s * 1000)))
    state = _state_name(result.state)
    if state not in TERMINAL_OK and state not in TERMINAL_BAD:
        time.sleep(slice_s)
        state = _state_name(result.state)
    if state in TERMINAL_OK:
        # Once, when done: the runner's own verdict (raises on failure) and its cleanup.
        state = _state_name(result.wait_until_finish() or state)
    return state


def wait_for_job(
    result: Any,
    deadline_s: float | None,
    log: Any,
    poll_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    cancel_timeout_s: float = CANCEL_TIMEOUT_S,
) -> str:
    """Block until ``result`` is terminal; return its state name or raise JobFailed.

    A stop signal while waiting cancels a remote job (bounded by ``cancel_timeout_s``)
    and then lets the abort continue.
    """
    jid = job_id(result)
    if log is not None and jid:
        log.info("beam_job_submitted", job_id=jid)
    try:
        return _wait(result, jid, deadline_s, log, poll_s, clock, cancel_timeout_s)
    except BaseException as exc:
        if jid and _stopping(exc):
            _cancel_on_stop(result, jid, log or get_logger("beam_launcher"), cancel_timeout_s)
        raise


def _wait(
    result: Any,
    jid: str | None,
    deadline_s: float | None,
    log: Any,
    poll_s: float,
    clock: Callable[[], float],
    cancel_timeout_s: float,
) -> str:
    started = clock()
    while True:
        remaining = None if deadline_s is None else deadline_s - (clock() - started)
        if remaining is not None and remaining <= 0:
            _state, error = request_cancel(result, cancel_timeout_s)
            if error is not None and log is not None:  # still fail the run; say so
                log.error("beam_job_cancel_failed", job_id=jid, error=error)
            raise JobFailed(
                f"Beam job {jid or ''} still running after {deadline_s:.0f} s: cancelled"
            )
        slice_s = poll_s if remaining is None else min(poll_s, remaining)
        state = _poll(result, slice_s)
        if state in TERMINAL_OK:
            return state
        if state in TERMINAL_BAD:
            raise JobFailed(f"Beam job {jid or ''} ended in state {state}")
        if log is not None:
            log.info("beam_job_running", job_id=jid, state=state)
