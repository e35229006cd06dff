"""Alert rules (promtool) and the push path: launcher metrics -> Pushgateway -> Prometheus.

Prometheus, promtool and the Pushgateway come from .ci/install-prometheus.sh (apt). The
tests start them on 127.0.0.1 free ports and skip, saying why, when they are absent.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import push_to_gateway

from services.beam_launcher.metrics import LauncherMetrics

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "alerts.yaml"
ALERTS_TEST = ROOT / "deploy" / "alerts_test.yaml"
CHART_ALERTS = ROOT / "helm" / "cp-pipeline" / "files" / "alerts.yaml"
INSTALL_HINT = "run .ci/install-prometheus.sh"


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed ({INSTALL_HINT})")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def test_chart_ships_the_same_alerts() -> None:
    assert CHART_ALERTS.read_bytes() == ALERTS.read_bytes()


def test_promtool_check_rules() -> None:
    promtool = need("promtool")
    out = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_fire_stale_and_stay_silent_when_healthy() -> None:
    promtool = need("promtool")
    out = subprocess.run(
        [promtool, "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check is not vacuous: a PromQL error is reported."""
    promtool = need("promtool")
    bad = tmp_path / "bad.yaml"
    bad.write_text(ALERTS.read_text().replace("max(cp_mirror", "max(cp_mirror{", 1))
    out = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, check=False)
    assert out.returncode != 0


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[dict[str, str]]:
    prometheus = need("prometheus")
    pushgateway = need("prometheus-pushgateway")
    pg_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{ALERTS}']\n"
        "scrape_configs:\n"
        "  - job_name: pushgateway\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{pg_port}']}}]\n"
    )
    procs = [
        subprocess.Popen(
            [pushgateway, f"--web.listen-address=127.0.0.1:{pg_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        urls = {
            "pushgateway": f"127.0.0.1:{pg_port}",
            "prometheus": f"http://127.0.0.1:{prom_port}",
        }
        wait_http(f"http://{urls['pushgateway']}/-/ready", procs[0])
        wait_http(f"{urls['prometheus']}/-/ready", procs[1])
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    data = get_json(url)
    assert data["status"] == "success"
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


def wait_query(prometheus: str, promql: str, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query(prometheus, promql)
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"no result for {promql} within {timeout}s")


def test_pushed_launcher_metrics_reach_prometheus(stack: dict[str, str]) -> None:
    metrics = LauncherMetrics()
    metrics.rows.labels(scan_type="echo").inc(1234)
    metrics.lines.labels(scan_type="echo").inc(1300)
    metrics.dead_letters.labels(scan_type="echo", error_class="json").inc(2)
    metrics.last_success.set_to_current_time()
    push_to_gateway(
        stack["pushgateway"],
        job="cp_launcher",
        registry=metrics.registry,
        grouping_key={"scan_type": "echo"},
    )
    (row,) = wait_query(stack["prometheus"], 'cp_launcher_rows_total{scan_type="echo"}')
    assert row["metric"]["job"] == "cp_launcher"  # honor_labels keeps the pushed job
    assert "instance" not in row["metric"] or row["metric"]["instance"] == ""
    assert float(row["value"][1]) == 1234
    (age,) = query(stack["prometheus"], "time() - max(cp_launcher_last_success_timestamp_seconds)")
    assert 0 <= float(age["value"][1]) < 120
    # The stale-stage condition of deploy/alerts.yaml, evaluated live: healthy launcher,
    # never-pushed mirror.
    launcher = "(time() - max(cp_launcher_last_success_timestamp_seconds) > 2 * 86400)"
    assert query(stack["prometheus"], launcher) == []
    assert query(stack["prometheus"], "absent(cp_mirror_last_success_timestamp_seconds)")
    rules = get_json(f"{stack['prometheus']}/api/v1/rules")["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {"CpStageStale"}
