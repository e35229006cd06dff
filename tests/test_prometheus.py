"""Alert rules (promtool) and the push path: launcher metrics -> Pushgateway -> Prometheus.

Prometheus, promtool and the Pushgateway come from .ci/install-prometheus.sh (apt). The
tests start them on 127.0.0.1 free ports (one stack per module) and skip, saying why, when
they are absent. The live test also runs every cp_* query of the dashboards in
deploy/dashboards/ against pushed metrics.
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
from prometheus_client import delete_from_gateway, push_to_gateway

from services.beam_launcher.metrics import LauncherMetrics
from services.mirror.metrics import MirrorMetrics
from services.queries.metrics import QueriesMetrics
from services.routeviews.metrics import MirrorMetrics as RouteviewsMetrics
from services.untar.metrics import UntarMetrics

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "alerts.yaml"
ALERTS_TEST = ROOT / "deploy" / "alerts_test.yaml"
CHART_ALERTS = ROOT / "helm" / "cp-pipeline" / "files" / "alerts.yaml"
DASHBOARDS = ROOT / "deploy" / "dashboards"
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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp_path = tmp_path_factory.mktemp("prometheus")
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
            # Debian's build persists to /var/lib/prometheus by default: keep each test
            # stack's state to itself.
            [
                pushgateway,
                f"--web.listen-address=127.0.0.1:{pg_port}",
                f"--persistence.file={tmp_path / 'pushgateway.data'}",
            ],
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


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every dashboard target that reads cp_* metrics.

    Panels on kube-state-metrics (kube_job_*, kube_cronjob_*) are left out: the test stack
    has no Kubernetes cluster and no kube-state-metrics to scrape (their PromQL is still
    checked by tests/test_dashboards.py with promtool).
    """
    found: list[tuple[str, str]] = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for inner in [panel, *panel.get("panels", [])]:
                for target in inner.get("targets", []):
                    expr = target["expr"].replace("$release", "cp-pipeline")
                    if "cp_" in expr and "kube_" not in expr:
                        found.append((inner["title"], expr))
    return found


def test_every_dashboard_query_answers_from_pushed_metrics(stack: dict[str, str]) -> None:
    """Push what the stages push (launcher, queries with quality gauges, the other stages'
    last success), then every cp_* dashboard query returns at least one series."""
    launcher = LauncherMetrics()
    launcher.files.labels(scan_type="http", status="ok").inc(10)
    launcher.files.labels(scan_type="http", status="rejected").inc(1)
    launcher.lines.labels(scan_type="http").inc(5000)
    launcher.rows.labels(scan_type="http").inc(4900)
    launcher.dead_letters.labels(scan_type="http", error_class="json").inc(100)
    launcher.coverage.labels(scan_type="http", field="asn").set(0.97)
    launcher.coverage.labels(scan_type="http", field="country").set(0.99)
    launcher.ip_metadata_missing.labels(scan_type="http").set(3)
    launcher.duration.set(120)
    launcher.last_success.set_to_current_time()
    # A backfill from 1.0 to 1.1 a quarter done: 1,000 of 4,000 http rows by 1.1.
    launcher.ledger_rows.labels(scan_type="http", pipeline_version="1.0").set(3000)
    launcher.ledger_rows.labels(scan_type="http", pipeline_version="1.1").set(1000)
    launcher.ledger_files.labels(scan_type="http", pipeline_version="1.0").set(3)
    launcher.ledger_files.labels(scan_type="http", pipeline_version="1.1").set(1)
    launcher.reprocess_selected.labels(scan_type="http", pipeline_version="1.0").inc(1)
    # A rebuild beside (breaking change of http_scan): 3 of 4 files done, v1 still live.
    launcher.schema_version.labels(table="http_scan").set(1)
    launcher.rebuild_files.labels(
        table="http_scan", table_version="http_scan__v2", state="done"
    ).set(3)
    launcher.rebuild_files.labels(
        table="http_scan", table_version="http_scan__v2", state="expected"
    ).set(4)
    queries = QueriesMetrics()
    queries.rows_written.labels(target="merged_reduced_scans").inc(4900)
    queries.completeness.labels(scan_type="http", date="2024-01-01").set(1.0)
    queries.newest_complete_date.labels(table="merged_reduced_scans").set(1704067200)
    queries.dead_letters.labels(scan_type="http", stage="parse", error_class="json").set(100)
    queries.duration.set(60)
    queries.last_success.set_to_current_time()
    mirror, untar, routeviews = MirrorMetrics(), UntarMetrics(), RouteviewsMetrics()
    mirror.last_success.set_to_current_time()
    untar.last_success.set_to_current_time()
    routeviews.last_success.labels(kind="routeviews").set_to_current_time()
    pushes: list[tuple[str, Any, dict[str, str]]] = [
        ("cp_beam_launcher", launcher.registry, {"scan_type": "http"}),
        ("cp_queries", queries.registry, {}),
        ("cp_mirror", mirror.registry, {}),
        ("cp_untar", untar.registry, {}),
        ("cp_routeviews", routeviews.registry, {}),
    ]
    for job, registry, grouping in pushes:
        push_to_gateway(stack["pushgateway"], job=job, registry=registry, grouping_key=grouping)
    try:
        checks = dashboard_queries()
        assert len(checks) >= 15
        wait_query(stack["prometheus"], 'cp_routeviews_last_success_timestamp_seconds{kind!=""}')
        wait_query(stack["prometheus"], 'cp_launcher_rows_total{job="cp_beam_launcher"}')
        wait_query(stack["prometheus"], "cp_quality_newest_complete_date_seconds")
        empty = [(title, expr) for title, expr in checks if not query(stack["prometheus"], expr)]
        assert empty == [], empty
        rows_per_s = next(expr for title, expr in checks if title.startswith("Rows per second"))
        (rate,) = query(stack["prometheus"], rows_per_s)
        assert float(rate["value"][1]) == pytest.approx(4900 / 120)
        share_expr = next(e for title, e in checks if title.startswith("Share of rows per"))
        share = {
            s["metric"]["pipeline_version"]: float(s["value"][1])
            for s in query(stack["prometheus"], share_expr)
        }
        assert share == {"1.0": pytest.approx(0.75), "1.1": pytest.approx(0.25)}
        done_expr = next(e for title, e in checks if title.startswith("Rebuild beside"))
        (done,) = query(stack["prometheus"], done_expr)
        assert done["metric"]["table_version"] == "http_scan__v2"
        assert float(done["value"][1]) == pytest.approx(0.75)
    finally:
        # Leave the shared stack as found (the other live test expects mirror never pushed).
        for job, _, grouping in pushes:
            delete_from_gateway(stack["pushgateway"], job=job, grouping_key=grouping)


def test_real_local_stages_push_to_the_pushgateway(stack: dict[str, str], tmp_path: Path) -> None:
    """Run the stages' own CLIs as `make run` does, each with --pushgateway: their
    metrics (and last-success times) reach Prometheus under their job names."""
    from sampledata import write_scan_archives
    from services.beam_launcher.__main__ import main as launcher_main
    from services.mirror.__main__ import main as mirror_main
    from services.queries.__main__ import main as queries_main
    from services.untar.__main__ import main as untar_main

    write_scan_archives(tmp_path / "sample", size=20, compresslevel=1)
    gw = ["--pushgateway", stack["pushgateway"]]
    raw, bucket, wh = tmp_path / "raw", tmp_path / "bucket", tmp_path / "wh"
    jobs = {
        "cp_mirror": {},
        "cp_untar": {},
        "cp_beam_launcher": {},
        "cp_queries": {},
    }
    try:
        assert (
            mirror_main(
                [
                    "archives",
                    "--source",
                    str(tmp_path / "sample" / "archives"),
                    "--dest",
                    str(raw),
                    *gw,
                ]
            )
            == 0
        )
        assert untar_main(["--raw", str(raw), "--target", str(bucket), *gw]) == 0
        assert (
            launcher_main(
                ["--input", str(bucket / "scans"), "--require-markers", "--warehouse", str(wh), *gw]
            )
            == 0
        )
        assert queries_main(["--warehouse", str(wh), *gw]) == 0
        for job in jobs:
            series = wait_query(
                stack["prometheus"],
                f'{{__name__=~"cp_.*_last_success_timestamp_seconds",job="{job}"}}',
            )
            assert float(series[0]["value"][1]) > time.time() - 600, job
        rows = wait_query(stack["prometheus"], 'cp_launcher_rows_total{job="cp_beam_launcher"}')
        assert sum(float(s["value"][1]) for s in rows) > 0
    finally:
        for job, grouping in jobs.items():
            delete_from_gateway(stack["pushgateway"], job=job, grouping_key=grouping)
