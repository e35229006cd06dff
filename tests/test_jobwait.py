"""The launcher's wait for a Beam job: success, failure, deadline, and stop signals."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from services.beam_launcher.jobwait import JobFailed, job_id, request_cancel, wait_for_job

ROOT = Path(__file__).resolve().parents[1]


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
    assert job_id(FakeResult(["DONE"], jid=None)) is None  # not the text "None"
    assert wait_for_job(Local(), deadline_s=None, log=None) == "DONE"


class StatefulResult:
    """A result with a job-service ``state`` (as Dataflow's and the portable runners')."""

    def __init__(self, states: list[str]) -> None:
        self.states = list(states)
        self.waits: list[int | None] = []

    @property
    def state(self) -> str:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def wait_until_finish(self, duration: int | None = None) -> str:
        self.waits.append(duration)
        return self.states[0]


def test_results_with_a_state_are_polled_and_waited_on_once() -> None:
    result = StatefulResult(["RUNNING", "RUNNING", "RUNNING", "DONE"])
    assert wait_for_job(result, deadline_s=None, log=None, poll_s=0.01) == "DONE"
    assert result.waits == [None]  # once, when terminal, without a duration


def test_portable_runner_job_longer_than_a_poll() -> None:
    """A real PortableRunner job outlasting several polls: its ``wait_until_finish``
    fails with "generator already executing" when called a second time."""
    beam = pytest.importorskip("apache_beam")
    from apache_beam.options.pipeline_options import PipelineOptions

    class Slow(beam.DoFn):  # type: ignore[misc]
        def process(self, x: int) -> Any:
            time.sleep(2.5)
            yield x

    opts = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]
    p = beam.Pipeline(options=PipelineOptions(opts))
    _ = p | beam.Create([1]) | beam.ParDo(Slow())
    result = p.run()
    assert wait_for_job(result, deadline_s=120, log=None, poll_s=0.5) == "DONE"


# ---------------------------------------------------------------------------------------
# A stopped launcher cancels the Dataflow job it is waiting on: a real process, a real
# signal, the real lifecycle abort path; only the PipelineResult is a stand-in (no
# Dataflow here). Its cancel() appends to a file, so calls are counted across the exit.

CHILD = """
import sys, time
from services.common import lifecycle
from services.common.logsetup import configure_logging, get_logger
from services.beam_launcher.jobwait import wait_for_job

record, mode, jid, cancel_timeout = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4]


class FakeDataflowResult:
    _state = "RUNNING"
    _announced = False

    @property
    def state(self):  # Beam's Dataflow result asks the service each time
        if not self._announced:
            self._announced = True
            print("waiting", flush=True)
        return self._state

    def job_id(self):
        return jid

    def wait_until_finish(self, duration=None):
        return self._state

    def cancel(self):
        with open(record, "a") as f:
            f.write("cancel\\n")
        if mode == "hang":
            time.sleep(3600)
        if mode == "error":
            raise RuntimeError("403 caller lacks dataflow.jobs.cancel")
        self._state = "CANCELLED"
        return "PipelineState.CANCELLING"


def main():
    configure_logging("INFO", stage="beam_launcher")
    log = get_logger("beam_launcher")
    timeout = float(cancel_timeout)
    wait_for_job(FakeDataflowResult(), None, log, poll_s=0.5, cancel_timeout_s=timeout)
    print("job finished", flush=True)
    return 0


sys.exit(lifecycle.run_main("beam_launcher", main))
"""


def run_child(
    tmp_path: Path,
    sig: signal.Signals,
    mode: str = "ok",
    jid: str = "2026-12-03_01_02_03-42",
    cancel_timeout: float = 20.0,
    second_signal_after: float | None = None,
) -> tuple[int, list[dict[str, Any]], int, float]:
    """(exit code, stderr JSON lines, cancel() calls, seconds from signal to exit)."""
    record = tmp_path / "cancel-calls"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(record), mode, jid, str(cancel_timeout)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "waiting\n"  # the job is being waited on
        time.sleep(random.uniform(0.0, 1.2))  # inside a poll, or between two
        sent = time.monotonic()
        proc.send_signal(sig)
        if second_signal_after is not None:
            time.sleep(second_signal_after)
            proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    objs = [json.loads(line) for line in err.splitlines()]
    calls = record.read_text().count("cancel\n") if record.exists() else 0
    return proc.returncode, objs, calls, took


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopped_launcher_cancels_the_job_once(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    rc, objs, calls, _took = run_child(tmp_path, sig)
    assert rc == code
    assert calls == 1
    messages = [o["message"] for o in objs]
    assert messages[0] == "beam_job_submitted"
    assert messages[-2:] == ["dataflow_job_cancel_requested", "run_aborted"]
    cancel = objs[-2]
    assert cancel["job_id"] == "2026-12-03_01_02_03-42" and cancel["signal"] == sig.name
    assert cancel["state"] == "CANCELLING" and cancel["severity"] == "WARNING"
    assert objs[-1]["signal"] == sig.name and objs[-1]["exit_code"] == code
    assert "job finished" not in messages


def test_cancel_that_hangs_is_bounded_and_a_second_signal_changes_nothing(
    tmp_path: Path,
) -> None:
    rc, objs, calls, took = run_child(
        tmp_path, signal.SIGTERM, mode="hang", cancel_timeout=2.0, second_signal_after=0.5
    )
    assert rc == 143 and calls == 1
    assert 2.0 <= took < 15.0, took
    failed = [o for o in objs if o["message"] == "dataflow_job_cancel_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "no answer within 2 s"
    assert failed[0]["severity"] == "ERROR" and failed[0]["job_id"] == "2026-12-03_01_02_03-42"
    assert [o["message"] for o in objs].count("run_aborted") == 1


def test_cancel_error_is_logged_and_the_exit_code_kept(tmp_path: Path) -> None:
    rc, objs, calls, _took = run_child(tmp_path, signal.SIGTERM, mode="error")
    assert rc == 143 and calls == 1
    (failed,) = [o for o in objs if o["message"] == "dataflow_job_cancel_failed"]
    assert failed["error"] == "RuntimeError: 403 caller lacks dataflow.jobs.cancel"
    assert objs[-1]["message"] == "run_aborted"


def test_local_runner_job_has_nothing_to_cancel(tmp_path: Path) -> None:
    rc, objs, calls, _took = run_child(tmp_path, signal.SIGTERM, jid="")
    assert rc == 143 and calls == 0
    assert not any(o["message"].startswith("dataflow_job_cancel") for o in objs)
    assert objs[-1]["message"] == "run_aborted"


def test_job_failure_is_not_cancelled_again() -> None:
    result = FakeResult(["RUNNING", "FAILED"])
    with pytest.raises(JobFailed):
        wait_for_job(result, deadline_s=None, log=Log(), poll_s=1)
    assert not result.cancelled


def test_request_cancel_reports_state_error_and_timeout() -> None:
    class Slow:
        def cancel(self) -> None:
            time.sleep(5)

    class Broken:
        def cancel(self) -> None:
            raise OSError("connection reset")

    class Fine:
        def cancel(self) -> str:
            return "PipelineState.CANCELLING"

    started = time.monotonic()
    assert request_cancel(Slow(), 0.2) == (None, "no answer within 0.2 s")
    assert time.monotonic() - started < 2
    assert request_cancel(Broken(), 1) == (None, "OSError: connection reset")
    assert request_cancel(Fine(), 1) == ("CANCELLING", None)
