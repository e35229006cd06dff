"""The Helm chart helm/cp-pipeline, rendered by the real Helm engine (helm-python-sdk).

Every rendered object is validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict) for 1.30 and 1.33; k8s/base must equal a fresh render.

Regenerate k8s/base after a chart change:
    uv run python tests/test_helm.py --write
"""

from __future__ import annotations

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


def render(values: dict[str, Any] | None, release: str = RELEASE) -> dict[str, str]:
    chart = helm.Chart.load(str(CHART))
    out: dict[str, str] = chart.render(values, name=release, namespace=NAMESPACE)
    return out


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


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_helm.py --write")
    write_base()
    print(f"wrote {BASE_DIR}")
