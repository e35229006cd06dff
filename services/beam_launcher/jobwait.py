"""Wait for a submitted Beam job (Dataflow or local) to finish, with a deadline.

The job id is logged as soon as the runner knows it; the wait polls in slices so a
deadline can be enforced; a job still running at the deadline is cancelled and the run
fails. Any terminal state other than DONE fails the run.

Example:
    >>> class Done:
    ...     def wait_until_finish(self, duration=None): return "DONE"
    >>> wait_for_job(Done(), deadline_s=10, log=None)
    'DONE'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

TERMINAL_OK = frozenset({"DONE"})
TERMINAL_BAD = frozenset({"FAILED", "CANCELLED", "DRAINED", "UPDATED", "STOPPED"})


class JobFailed(RuntimeError):
    """The Beam job ended in a state other than DONE, or missed its deadline."""


def _state_name(state: Any) -> str:
    text = str(state)
    return text.rsplit(".", 1)[-1].upper()


def job_id(result: Any) -> str | None:
    """The runner's job id (Dataflow), or None for local runners."""
    getter = getattr(result, "job_id", None)
    try:
        return str(getter()) if callable(getter) else None
    except Exception:
        return None


def wait_for_job(
    result: Any,
    deadline_s: float | None,
    log: Any,
    poll_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Block until ``result`` is terminal; return its state name or raise JobFailed."""
    jid = job_id(result)
    if log is not None and jid:
        log.info("beam_job_submitted", job_id=jid)
    started = clock()
    while True:
        remaining = None if deadline_s is None else deadline_s - (clock() - started)
        if remaining is not None and remaining <= 0:
            try:
                result.cancel()
            except Exception as exc:  # still fail the run; say we could not cancel
                if log is not None:
                    log.error("beam_job_cancel_failed", job_id=jid, error=str(exc))
            raise JobFailed(
                f"Beam job {jid or ''} still running after {deadline_s:.0f} s: cancelled"
            )
        slice_s = poll_s if remaining is None else min(poll_s, remaining)
        state = _state_name(result.wait_until_finish(duration=int(slice_s * 1000)))
        if state in TERMINAL_OK:
            return state
        if state in TERMINAL_BAD:
            raise JobFailed(f"Beam job {jid or ''} ended in state {state}")
        if log is not None:
            log.info("beam_job_running", job_id=jid, state=state)
