"""The launcher's wait for a Beam job: success, failure and deadline."""

from __future__ import annotations

import pytest

from services.beam_launcher.jobwait import JobFailed, job_id, wait_for_job


class FakeResult:
    def __init__(self, states: list[str], jid: str | None = "2026-11-23_01_02_03-123") -> None:
        self.states = list(states)
        self.calls: list[int | None] = []
        self.cancelled = False
        self._jid = jid

    def job_id(self) -> str | None:
        return self._jid

    def wait_until_finish(self, duration: int | None = None) -> str:
        self.calls.append(duration)
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def cancel(self) -> None:
        self.cancelled = True


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def info(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))

    error = info


def test_success_after_polls_records_job_id() -> None:
    result, log = FakeResult(["PipelineState.RUNNING", "RUNNING", "PipelineState.DONE"]), Log()
    assert wait_for_job(result, deadline_s=3600, log=log, poll_s=30) == "DONE"
    assert log.events[0] == ("beam_job_submitted", {"job_id": "2026-11-23_01_02_03-123"})
    assert result.calls == [30000, 30000, 30000]
    assert not result.cancelled


@pytest.mark.parametrize("state", ["FAILED", "PipelineState.CANCELLED", "DRAINED"])
def test_failure_states_fail_the_run(state: str) -> None:
    with pytest.raises(JobFailed, match=state.rsplit(".", 1)[-1]):
        wait_for_job(FakeResult(["RUNNING", state]), deadline_s=None, log=None, poll_s=1)


def test_deadline_cancels_the_job() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 40.0  # every look at the clock is 40 s later
        return now[0]

    result = FakeResult(["RUNNING"])
    with pytest.raises(JobFailed, match="still running after 100 s"):
        wait_for_job(result, deadline_s=100, log=Log(), poll_s=30, clock=clock)
    assert result.cancelled
    assert all(c is not None and c <= 30000 for c in result.calls)


def test_local_results_have_no_job_id() -> None:
    class Local:
        def wait_until_finish(self, duration: int | None = None) -> str:
            return "DONE"

    assert job_id(Local()) is None
    assert wait_for_job(Local(), deadline_s=None, log=None) == "DONE"
