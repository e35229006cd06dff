"""The Helm chart helm/cp-pipeline, rendered by the real Helm engine (helm-python-sdk).

Every rendered object is validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict) for 1.30 and 1.33; k8s/base must equal a fresh render.

Regenerate k8s/base after a chart change:
    uv run python tests/test_helm.py --write
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "cp-pipeline"
BASE_DIR = ROOT / "k8s" / "base"
BASE_VALUES = CHART / "ci" / "base-values.yaml"
PROD_VALUES = CHART / "values-production.example.yaml"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "cp-pipeline"
NAMESPACE = "cp-pipeline"
KUBE_VERSIONS = ("1.30.0", "1.33.0")
STAGES = ("beam-launcher", "mirror", "queries", "routeviews", "untar")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # no OpenAPI schema in kubernetes-validate
HEADER = (
    "# Generated from helm/cp-pipeline with helm/cp-pipeline/ci/base-values.yaml;\n"
    "# do not edit. Regenerate: uv run python tests/test_helm.py --write\n"
)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def render_all(values: dict[str, Any] | None, release: str = RELEASE) -> dict[str, str]:
    """Template path -> rendered text, NOTES.txt included."""
    chart = helm.Chart.load(str(CHART))
    out: dict[str, str] = chart.render(values, name=release, namespace=NAMESPACE)
    return out


def render(values: dict[str, Any] | None, release: str = RELEASE) -> dict[str, str]:
    """The rendered manifests (what `helm template` prints; NOTES.txt is not one)."""
    return {k: v for k, v in render_all(values, release).items() if not k.endswith("NOTES.txt")}


def notes(values: dict[str, Any]) -> str:
    return next(v for k, v in render_all(values).items() if k.endswith("NOTES.txt"))


def docs_of(manifests: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for text in manifests.values():
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def base_files() -> dict[str, str]:
    """k8s/base file name -> content, as rendered now."""
    files: dict[str, str] = {}
    for path, text in sorted(render(load_yaml(BASE_VALUES)).items()):
        body = text.strip()
        if not body:
            continue
        files[Path(path).name] = HEADER + body + "\n"
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = HEADER + yaml.safe_dump(kustomization, sort_keys=False)
    return files


def write_base() -> None:
    BASE_DIR.mkdir(parents=True, exist_ok=True)
    for old in BASE_DIR.glob("*.yaml"):
        old.unlink()
    for name, text in base_files().items():
        (BASE_DIR / name).write_text(text)


@pytest.fixture(scope="module")
def base_docs() -> list[dict[str, Any]]:
    return docs_of(render(load_yaml(BASE_VALUES)))


@pytest.fixture(scope="module")
def prod_docs() -> list[dict[str, Any]]:
    return docs_of(render(load_yaml(PROD_VALUES)))


def test_defaults_alone_are_refused_naming_every_required_key() -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render(None)
    msg = str(err.value)
    for key in ("/gcp/project", "/gcp/region", "/gcp/bigqueryDataset", "/image/registry"):
        assert key in msg
    for key in ("mirrorSource", "raw", "scans", "resources", "ipMetadata", "temp"):
        assert f"/storage/{key}" in msg


@pytest.mark.parametrize("values_file", [BASE_VALUES, PROD_VALUES], ids=["base", "production"])
def test_strict_lint_is_clean(values_file: Path) -> None:
    for kube in KUBE_VERSIONS:
        report = helm.lint(
            str(CHART),
            load_yaml(values_file),
            strict=True,
            namespace=NAMESPACE,
            kube_version=f"v{kube}",
        )
        assert report["errors"] == []
        # Only the informational "icon is recommended" may remain.
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("which", ["base", "production"])
def test_every_rendered_object_validates_strictly(
    which: str, kube: str, base_docs: list[dict[str, Any]], prod_docs: list[dict[str, Any]]
) -> None:
    docs = base_docs if which == "base" else prod_docs
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, kube, strict=True)
        checked += 1
    assert checked >= 5 * 2 + 3 * 2  # CronJob + ServiceAccount per stage, 3 Role/RoleBinding


def test_production_example_renders_monitoring_objects(prod_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in prod_docs}
    assert kinds >= CRD_KINDS
    rule = next(d for d in prod_docs if d["kind"] == "PrometheusRule")
    alerts = {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "CpStageStale" in alerts
    monitor = next(d for d in prod_docs if d["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_cronjob_per_stage_with_safe_job_settings(base_docs: list[dict[str, Any]]) -> None:
    cronjobs = by_kind(base_docs, "CronJob")
    assert sorted(cronjobs) == [f"{RELEASE}-{s}" for s in STAGES]
    for name, cj in cronjobs.items():
        spec = cj["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] == 600
        assert spec["successfulJobsHistoryLimit"] == 3
        assert spec["failedJobsHistoryLimit"] == 5
        job = spec["jobTemplate"]["spec"]
        assert job["backoffLimit"] == 2
        assert job["activeDeadlineSeconds"] >= 21600
        pod = job["template"]["spec"]
        assert pod["serviceAccountName"] == name
        assert pod["restartPolicy"] == "Never"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["image"].startswith("us-docker.pkg.dev/my-gcp-project/cp/cp-")
    launcher = cronjobs[f"{RELEASE}-beam-launcher"]["spec"]["jobTemplate"]["spec"]
    assert launcher["activeDeadlineSeconds"] == 43200  # the stage overrides jobDefaults


def env_of(cj: dict[str, Any]) -> dict[str, Any]:
    (container,) = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_env_comes_from_values_and_chains_the_stages(base_docs: list[dict[str, Any]]) -> None:
    cronjobs = by_kind(base_docs, "CronJob")
    env = {name.removeprefix(f"{RELEASE}-"): env_of(cj) for name, cj in cronjobs.items()}
    assert env["mirror"]["CP_RAW"] == env["untar"]["CP_RAW"] == "gs://my-cp-raw/archives"
    assert env["untar"]["CP_UNTAR_TARGET"] == env["beam-launcher"]["CP_INPUT"]
    assert env["beam-launcher"]["CP_BQ_PROJECT"] == "my-gcp-project"
    assert env["beam-launcher"]["CP_BQ_DATASET"] == "base"
    assert env["routeviews"]["CP_IP_METADATA"] == env["beam-launcher"]["CP_IP_METADATA"]
    nxt = {stage: e.get("CP_NEXT_STAGE") for stage, e in env.items()}
    assert nxt == {
        "mirror": f"{RELEASE}-untar",
        "untar": f"{RELEASE}-beam-launcher",
        "beam-launcher": f"{RELEASE}-queries",
        "routeviews": None,
        "queries": None,
    }
    for e in env.values():
        assert e["CP_PUSHGATEWAY"].startswith("http://")
        assert e["CP_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        # Nothing secret-looking is passed as plain env.
        assert not [k for k in e if any(w in k for w in ("SECRET", "PASSWORD", "TOKEN", "KEY"))]


def test_stage_env_override_wins() -> None:
    values = load_yaml(BASE_VALUES)
    values["stages"] = {"untar": {"env": {"CP_UNTAR_MAX_RATIO": 50, "LOG_LEVEL": "DEBUG"}}}
    cj = by_kind(docs_of(render(values)), "CronJob")[f"{RELEASE}-untar"]
    env = env_of(cj)
    assert env["CP_UNTAR_MAX_RATIO"] == "50"
    assert env["LOG_LEVEL"] == "DEBUG"


def test_service_accounts_use_workload_identity(
    base_docs: list[dict[str, Any]], prod_docs: list[dict[str, Any]]
) -> None:
    sas = by_kind(base_docs, "ServiceAccount")
    assert sorted(sas) == [f"{RELEASE}-{s}" for s in STAGES]
    for name, sa in sas.items():
        stage = name.removeprefix(f"{RELEASE}-")
        gsa = sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        assert gsa == f"cp-{stage}@my-gcp-project.iam.gserviceaccount.com"
        assert sa["automountServiceAccountToken"] is False
    prod = by_kind(prod_docs, "ServiceAccount")[f"{RELEASE}-beam-launcher"]
    assert (
        prod["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        == "cp-launcher@example-cp-prod.iam.gserviceaccount.com"
    )
    assert not [d for d in base_docs + prod_docs if d["kind"] == "Secret"]


def role_grants(role: dict[str, Any]) -> set[tuple[str, str, str, tuple[str, ...] | None]]:
    grants = set()
    for rule in role["rules"]:
        names = tuple(rule["resourceNames"]) if "resourceNames" in rule else None
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    grants.add((group, resource, verb, names))
    return grants


def test_rbac_grants_exactly_create_jobs_and_get_next_cronjob(
    base_docs: list[dict[str, Any]],
) -> None:
    roles = by_kind(base_docs, "Role")
    bindings = by_kind(base_docs, "RoleBinding")
    chain = {"mirror": "untar", "untar": "beam-launcher", "beam-launcher": "queries"}
    assert sorted(roles) == sorted(f"{RELEASE}-{s}" for s in chain)
    assert not [d for d in base_docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for stage, nxt in chain.items():
        name = f"{RELEASE}-{stage}"
        assert role_grants(roles[name]) == {
            ("batch", "cronjobs", "get", (f"{RELEASE}-{nxt}",)),
            # create cannot be limited by resourceNames in Kubernetes RBAC
            ("batch", "jobs", "create", None),
        }
        binding = bindings[name]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": name,
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}
        ]
    # Only chaining stages get an API token in their pods.
    for name, cj in by_kind(base_docs, "CronJob").items():
        pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is (name in roles)


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("gcp", "project"), "Bad_Project", "/gcp/project"),
        (("storage", "raw"), "s3://bucket", "/storage/raw"),
        (("jobDefaults", "backoffLimit"), -1, "/jobDefaults/backoffLimit"),
        (("stages", "mirror", "concurrencyPolicy"), "Allow", "concurrencyPolicy"),
        (("stages", "mirror", "next"), "nowhere", "/stages/mirror/next"),
        (("stages", "untar", "schedule"), "daily", "/stages/untar/schedule"),
        (("stages", "queries", "surprise"), 1, "surprise"),
    ],
)
def test_schema_rejects_bad_values(path: tuple[str, ...], value: Any, needle: str) -> None:
    values = load_yaml(BASE_VALUES)
    node = values
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(chart.merge_values(values))
    assert needle in str(err.value)
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_values_yaml_documents_every_key() -> None:
    """Every key line of values.yaml is preceded by a comment (or is inside a flow map)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-"):
            continue
        prev = lines[i - 1].strip() if i else ""
        parent_line = stripped.endswith(":")  # a map whose children are documented
        if not prev.startswith("#") and not parent_line:
            undocumented.append(line)
    assert undocumented == []


def test_k8s_base_equals_a_fresh_render() -> None:
    expected = base_files()
    actual = {p.name: p.read_text() for p in sorted(BASE_DIR.glob("*.yaml"))}
    assert actual == expected, "k8s/base is stale: uv run python tests/test_helm.py --write"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_base() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(BASE_DIR)], check=True, capture_output=True, text=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert len(docs) == len(docs_of(render(load_yaml(BASE_VALUES))))
    assert {d["metadata"]["namespace"] for d in docs} == {NAMESPACE}


def launcher_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cj = by_kind(docs, "CronJob")[f"{RELEASE}-beam-launcher"]
    (container,) = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def flag_values(args: list[str], flag: str) -> list[str]:
    """Values of ``flag`` in an argument list (``--f=v`` and ``--f v`` forms)."""
    out = [a.split("=", 1)[1] for a in args if a.startswith(f"{flag}=")]
    out += [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    return out


@pytest.mark.parametrize("values_file", [PROD_VALUES, *CI_VALUES], ids=lambda p: p.name)
def test_launcher_runs_its_command_and_gives_dataflow_its_own_image(values_file: Path) -> None:
    """The image's ENTRYPOINT is Beam's worker boot: the pod must name the launcher itself."""
    values = load_yaml(values_file)
    container = launcher_container(docs_of(render(values)))
    assert container["command"] == ["python", "-m", "services.beam_launcher"]
    runner = flag_values(container["args"], "--runner")
    images = flag_values(container["args"], "--sdk_container_image")
    if runner == ["DataflowRunner"]:
        assert images == [container["image"]], "workers must run the launcher's image"
        assert "use_runner_v2" in flag_values(container["args"], "--experiments")
    else:
        assert runner and images == []


def test_every_stage_names_its_module_as_command(base_docs: list[dict[str, Any]]) -> None:
    for name, cj in by_kind(base_docs, "CronJob").items():
        (container,) = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        module = name.removeprefix(f"{RELEASE}-").replace("-", "_")
        assert container["command"] == ["python", "-m", f"services.{module}"]
        assert (ROOT / "services" / module / "__main__.py").is_file()


def test_digest_pinned_image_is_the_worker_image_too() -> None:
    values = load_yaml(BASE_VALUES)
    digest = "sha256:" + "ab" * 32
    values["stages"] = {
        "beam-launcher": {"image": {"repository": "cp-beam-launcher", "digest": digest}}
    }
    container = launcher_container(docs_of(render(values)))
    assert container["image"] == f"us-docker.pkg.dev/my-gcp-project/cp/cp-beam-launcher@{digest}"
    assert flag_values(container["args"], "--sdk_container_image") == [container["image"]]


def test_rendered_launcher_flags_are_real_beam_and_launcher_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The production render, parsed by the launcher's CLI and Beam's own option classes."""
    from apache_beam.options.pipeline_options import (
        DebugOptions,
        GoogleCloudOptions,
        StandardOptions,
        WorkerOptions,
    )

    from services.beam_launcher.__main__ import parse_args
    from services.beam_launcher.run import _pipeline_options

    container = launcher_container(docs_of(render(load_yaml(PROD_VALUES))))
    for item in container["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
    cfg, _ = parse_args(container["args"])
    options = _pipeline_options(cfg, "test")
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    gcp = options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region) == ("example-cp-prod", "us-central1")
    assert gcp.service_account_email == "cp-dataflow-worker@example-cp-prod.iam.gserviceaccount.com"
    assert gcp.temp_location == "gs://example-cp-prod-temp/launcher"
    assert gcp.staging_location == "gs://example-cp-prod-temp/staging"
    worker = options.view_as(WorkerOptions)
    assert worker.sdk_container_image == container["image"]
    assert worker.max_num_workers == 20
    assert worker.subnetwork == "regions/us-central1/subnetworks/dataflow"
    assert options.view_as(DebugOptions).experiments == ["use_runner_v2"]
    assert cfg.require_markers is True and cfg.sink == "bigquery"


@pytest.mark.parametrize("bad", [["--runner", "DirectRunner"], ["--sdk_container_image=x/y:1"]])
def test_launcher_args_cannot_bypass_runner_or_worker_image(bad: list[str]) -> None:
    values = load_yaml(BASE_VALUES)
    values["stages"] = {"beam-launcher": {"args": bad}}
    with pytest.raises(helm.HelmError, match=r"stages\.beam-launcher"):
        render(values)


def test_pods_get_their_job_identity_for_chaining(base_docs: list[dict[str, Any]]) -> None:
    for cj in by_kind(base_docs, "CronJob").values():
        env = env_of(cj)
        assert env["CP_JOB_NAME"] == {
            "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}
        }
        assert env["CP_JOB_UID"] == {
            "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}
        }


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_chart_testing_cases_lint_and_validate(values_file: Path) -> None:
    values = load_yaml(values_file)
    docs = docs_of(render(values))
    for kube in KUBE_VERSIONS:
        report = helm.lint(
            str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube}"
        )
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []
        for doc in docs:
            if doc["kind"] not in CRD_KINDS:
                kubernetes_validate.validate(doc, kube, strict=True)
    assert by_kind(docs, "CronJob")


def test_chart_testing_config() -> None:
    """ct.yaml points at this chart; ci/ holds one case per example values file."""
    config = load_yaml(ROOT / "ct.yaml")
    known = {
        "remote", "target-branch", "chart-dirs", "charts", "validate-maintainers",
        "validate-chart-schema", "validate-yaml", "check-version-increment",
        "helm-extra-args", "chart-repos", "excluded-charts", "namespace", "release-label",
    }  # fmt: skip
    assert set(config) <= known
    assert CHART.parent in [ROOT / d for d in config["chart-dirs"]]
    names = {p.name for p in CI_VALUES}
    assert {"base-values.yaml", "production-values.yaml", "direct-runner-values.yaml"} <= names
    # The production case is the published example, byte for byte.
    assert (CHART / "ci" / "production-values.yaml").read_text() == PROD_VALUES.read_text(), (
        "cp helm/cp-pipeline/values-production.example.yaml "
        "helm/cp-pipeline/ci/production-values.yaml"
    )


def test_notes_say_what_was_installed_and_how_to_backfill() -> None:
    values = load_yaml(PROD_VALUES)
    text = notes(values)
    cronjobs = set(by_kind(docs_of(render(values)), "CronJob"))
    named = set(re.findall(r"--from=cronjob/([a-z0-9-]+)", text))
    assert named == {f"{RELEASE}-mirror", f"{RELEASE}-beam-launcher"}
    assert named <= cronjobs
    for name in cronjobs:
        assert name in text
    assert "CP_START_DATE=" in text and "CP_NEXT_STAGE-" in text
    assert f"PrometheusRule {RELEASE} " in text and "grafana_dashboard" in text
    # With monitoring off the notes say so instead of pointing at objects that do not exist.
    base = notes(load_yaml(BASE_VALUES))
    assert "Dashboards: not installed" in base and "Alerts: not installed" in base


def test_chart_readme_is_generated_from_values_and_lists_every_value() -> None:
    sys.path.insert(0, str(ROOT / "helm"))
    try:
        import chart_readme
    finally:
        sys.path.pop(0)
    readme = (CHART / "README.md").read_text()
    assert readme == chart_readme.render(), "stale: uv run python helm/chart_readme.py"
    rows = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M))

    def leaves(node: Any, path: str) -> list[str]:
        if isinstance(node, dict) and node:
            out = []
            for key, value in node.items():
                out += leaves(value, chart_readme.join_path(path, key))
            return out
        return [path]

    # A leaf is listed itself or, inside a flow map ({cpu: 1, memory: 1Gi}), by its map.
    missing = [
        p
        for p in leaves(load_yaml(CHART / "values.yaml"), "")
        if p not in rows and p.rsplit(".", 1)[0] not in rows
    ]
    assert missing == []
    assert "stages.beam-launcher.dataflow.maxNumWorkers" in rows


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_helm.py --write")
    write_base()
    print(f"wrote {BASE_DIR}")
