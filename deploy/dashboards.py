"""Grafana dashboards of the cp-pipeline, as code (grafana-foundation-sdk builders).

Writes every dashboard to deploy/dashboards/<uid>.json and to the Helm chart's
helm/cp-pipeline/files/dashboards/<uid>.json (a ConfigMap per file, label
grafana_dashboard: "1", when monitoring.dashboards.enabled).

    uv run python deploy/dashboards.py           # regenerate both copies
    uv run python deploy/dashboards.py --check   # exit 1 if a committed file is stale

Metric semantics: every stage is a batch job that pushes a fresh registry to the
Pushgateway at the end of a run (pushadd, grouping job [+ scan_type]). A pushed
``*_total`` counter therefore holds the totals *of the last run* and stays constant until
the next push; the panels show those values directly ("per run") instead of rate(),
which would be zero between runs and meaningless across runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

ROOT = Path(__file__).resolve().parents[1]
OUT_DIRS = (ROOT / "deploy" / "dashboards", ROOT / "helm" / "cp-pipeline" / "files" / "dashboards")
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
STAGES = ("mirror", "untar", "routeviews", "launcher", "queries")


def query(expr: str, legend: str, ref: str) -> gp.Dataquery:
    return gp.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def targets(*queries: tuple[str, str]) -> list[gp.Dataquery]:
    return [query(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


class Ids:
    """Deterministic panel ids (stable JSON, stable links)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


def ts(
    ids: Ids, title: str, description: str, unit: str, *queries: tuple[str, str], w: int = 12
) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .targets(targets(*queries))
        .grid_pos(GridPos(h=8, w=w))
    )


def st(
    ids: Ids, title: str, description: str, unit: str, *queries: tuple[str, str], w: int = 12
) -> stat.Panel:
    return (
        stat.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .targets(targets(*queries))
        .grid_pos(GridPos(h=8, w=w))
    )


def pipeline_dashboard() -> gd.Dashboard:
    ids = Ids()
    d = (
        gd.Dashboard("Censored Planet pipeline")
        .uid("cp-pipeline")
        .tags(["cp-pipeline", "censored-planet"])
        .description("Freshness, coverage, throughput and Kubernetes job health of the cp-pipeline")
        .time("now-7d", "now")
        .timezone("utc")
        .refresh("5m")
        .with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            gd.TextBoxVariable("release")
            .label("Helm release")
            .description("Prefix of the CronJob/Job names (<release>-<stage>-...)")
            .default_value("cp-pipeline")
        )
    )

    d = d.with_row(gd.Row("Freshness").id(ids()))
    d = d.with_panel(
        ts(
            ids,
            "Hours since last success, per stage",
            "time() - <stage>_last_success_timestamp_seconds; CpStageStale fires above 48h.",
            "h",
            *[
                (f"(time() - max(cp_{stage}_last_success_timestamp_seconds)) / 3600", stage)
                for stage in STAGES
            ],
        )
    )
    d = d.with_panel(
        st(
            ids,
            "Newest complete date, per table",
            "cp_quality_newest_complete_date_seconds of the last queries run (README: complete).",
            "dateTimeAsIsoNoDateIfToday",
            ("max by (table) (cp_quality_newest_complete_date_seconds) * 1000", "{{table}}"),
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Days behind: newest complete date, per table",
            "Age of the newest complete date (days); a daily pipeline keeps this near 1-2.",
            "d",
            (
                "(time() - max by (table) (cp_quality_newest_complete_date_seconds)) / 86400",
                "{{table}}",
            ),
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Completeness (table rows / ledger rows), worst date per scan type",
            "cp_quality_completeness_ratio over the quality window; 1 = nothing lost.",
            "percentunit",
            ("min by (scan_type) (cp_quality_completeness_ratio)", "{{scan_type}}"),
        )
    )

    d = d.with_row(gd.Row("Coverage").id(ids()))
    d = d.with_panel(
        ts(
            ids,
            "Dead letters per line of the last run, by reason",
            "cp_launcher_dead_letters_total / cp_launcher_lines_total of the last launcher run "
            "(pushed counters are per-run totals). CpLauncherDeadLettersHigh fires above 10%.",
            "percentunit",
            (
                "sum by (scan_type, error_class) (cp_launcher_dead_letters_total)"
                " / ignoring (error_class) group_left"
                " sum by (scan_type) (cp_launcher_lines_total)",
                "{{scan_type}} {{error_class}}",
            ),
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Dead letters in the quality window, by stage and reason",
            "cp_quality_dead_letters of the last queries run.",
            "short",
            (
                "sum by (stage, error_class) (cp_quality_dead_letters)",
                "{{stage}} {{error_class}}",
            ),
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Enrichment coverage of the last run, per scan type",
            "Share of rows with IP metadata; CpEnrichmentCoverageLow fires when asn < 80% for 2h.",
            "percentunit",
            (
                "max by (scan_type, field) (cp_launcher_enrichment_coverage_ratio)",
                "{{scan_type}} {{field}}",
            ),
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "IP-metadata lookups without a routeviews file",
            "cp_launcher_ip_metadata_missing_lookups of the last run (stale/missing routeviews).",
            "short",
            ("max by (scan_type) (cp_launcher_ip_metadata_missing_lookups)", "{{scan_type}}"),
        )
    )

    d = d.with_row(gd.Row("Throughput").id(ids()))
    d = d.with_panel(
        ts(
            ids,
            "Files per run, by status",
            "cp_launcher_files_total of the last run; rejected files raise "
            "CpLauncherRejectedFiles.",
            "short",
            ("sum by (scan_type, status) (cp_launcher_files_total)", "{{scan_type}} {{status}}"),
            w=8,
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Rows per run",
            "cp_launcher_rows_total of the last run; CpLauncherRowVolumeCollapse compares it "
            "with its 7-day average.",
            "short",
            ("sum by (scan_type) (cp_launcher_rows_total)", "{{scan_type}}"),
            w=8,
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Rows per second of the last run",
            "cp_launcher_rows_total / cp_launcher_run_duration_seconds (same push group).",
            "rowsps",
            (
                "sum by (scan_type) (cp_launcher_rows_total)"
                " / sum by (scan_type) (cp_launcher_run_duration_seconds > 0)",
                "{{scan_type}}",
            ),
            w=8,
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Queries: rows written per run, by target",
            "cp_queries_rows_written_total of the last queries run.",
            "short",
            ("sum by (target) (cp_queries_rows_written_total)", "{{target}}"),
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Run duration, per stage",
            "<stage>_run_duration_seconds of the last run.",
            "s",
            *[(f"max(cp_{stage}_run_duration_seconds)", stage) for stage in STAGES],
        )
    )

    d = d.with_row(gd.Row("Pipeline versions (backfills)").id(ids()))
    # Each push group (job [+ scan_type]) holds the ledger as its last run saw it; max
    # picks one group's value where a scan type was pushed by several groups.
    ledger_rows = "max by (scan_type, pipeline_version) (cp_launcher_ledger_rows)"
    d = d.with_panel(
        ts(
            ids,
            "Share of rows per pipeline version, per scan type",
            "cp_launcher_ledger_rows: base-table rows of ok files in the ledger by the pipeline "
            "version that wrote them, set at the end of every launcher run. A backfill "
            "(--reprocess-pipeline-older-than) moves the share from the old version to the new.",
            "percentunit",
            (
                f"{ledger_rows} / ignoring (pipeline_version) group_left "
                f"sum by (scan_type) ({ledger_rows})",
                "{{scan_type}} {{pipeline_version}}",
            ),
            w=8,
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Ok files per pipeline version, per scan type",
            "cp_launcher_ledger_files of the last run: files whose rows each pipeline version "
            "wrote; the old version's count falls to 0 when a backfill is complete.",
            "short",
            (
                "max by (scan_type, pipeline_version) (cp_launcher_ledger_files)",
                "{{scan_type}} {{pipeline_version}}",
            ),
            w=8,
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Files selected for their old pipeline version, last run",
            "cp_launcher_reprocess_selected_files_total: files a run with "
            "--reprocess-pipeline-older-than took because an older version wrote them, by "
            "that version (0 on a resumed backfill's last run: nothing older left).",
            "short",
            (
                "sum by (scan_type, pipeline_version) (cp_launcher_reprocess_selected_files_total)",
                "{{scan_type}} {{pipeline_version}}",
            ),
            w=8,
        )
    )

    d = d.with_row(gd.Row("Schema versions (rebuilds beside)").id(ids()))
    d = d.with_panel(
        ts(
            ids,
            "Schema version per table",
            "cp_launcher_schema_version after each launcher run's schema check: the version "
            "readers see. Under a breaking change it stays at the live (old) version until the "
            "rebuild beside it switches the table (--full; docs/operations.md, Schema changes).",
            "none",
            ("max by (table) (cp_launcher_schema_version)", "{{table}}"),
        )
    )
    rebuild = 'max by (table, table_version) (cp_launcher_rebuild_files{{state="{state}"}})'
    d = d.with_panel(
        ts(
            ids,
            "Rebuild beside: share of files done",
            "cp_launcher_rebuild_files at the end of each rebuild run: files ok in the building "
            "version's ledger over the input's files of its scan type. At 100% (and rows per "
            "date equal to its ledger's) the run switches the table to that version.",
            "percentunit",
            (
                f"{rebuild.format(state='done')} / {rebuild.format(state='expected')}",
                "{{table_version}}",
            ),
        )
    )

    d = d.with_row(gd.Row("Kubernetes job health").id(ids()))
    d = d.with_panel(
        ts(
            ids,
            "Failed pods per Job",
            "kube-state-metrics kube_job_status_failed of the release's Jobs; "
            "CpStageJobFailed fires when a recent Job failed for good.",
            "short",
            (
                'sum by (job_name) (kube_job_status_failed{job_name=~"$release-.*"})',
                "{{job_name}}",
            ),
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Hours since the last successful Job, per CronJob",
            "time() - kube_cronjob_status_last_successful_time (kube-state-metrics).",
            "h",
            (
                "(time() - max by (cronjob) "
                '(kube_cronjob_status_last_successful_time{cronjob=~"$release-.*"})) / 3600',
                "{{cronjob}}",
            ),
        )
    )
    return d


DASHBOARDS = {"cp-pipeline": pipeline_dashboard}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out: dict[str, str] = {}
    for name, build in DASHBOARDS.items():
        model: Any = build().build()
        out[f"{name}.json"] = json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
    return out


def stale() -> list[Path]:
    """Committed files that differ from a fresh render (or are missing/extra)."""
    files = render()
    bad: list[Path] = []
    for out_dir in OUT_DIRS:
        for name, text in files.items():
            path = out_dir / name
            if not path.is_file() or path.read_text() != text:
                bad.append(path)
        if out_dir.is_dir():
            bad.extend(p for p in sorted(out_dir.glob("*.json")) if p.name not in files)
    return bad


def write() -> None:
    files = render()
    for out_dir in OUT_DIRS:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out_dir / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if committed JSON is stale")
    args = p.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"stale: {path.relative_to(ROOT)}", file=sys.stderr)
        if bad:
            print("regenerate: uv run python deploy/dashboards.py", file=sys.stderr)
            return 1
        return 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
