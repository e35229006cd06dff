"""services/common/chain.py against a Kubernetes API double (http.server on 127.0.0.1).

The double answers exactly the two calls the chart's Role allows: GET one CronJob and
POST a Job; it records every request so the path, namespace and body can be checked. Like
the real API server it gives a created Job a uid and the ``batch.kubernetes.io/job-name``
and ``controller-uid`` labels on its pod template (what the chart's downward-API env reads),
and it serves the discovery documents a real ``kubectl`` needs, so kubectl's own
``create job --from=cronjob/...`` runs against it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from services.common import chain

ROOT = Path(__file__).resolve().parents[1]
NS = "cp-pipeline"
CRONJOB_PATH = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/cronjobs/([^/?]+)$")
JOBS_PATH = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs$")
KUBECTL_CRONJOB_PATH = re.compile(
    r"^/apis/batch/(v1|v1beta1)/namespaces/([^/]+)/cronjobs/([^/?]+)$"
)
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"


def base_cronjobs() -> dict[str, dict[str, Any]]:
    """The CronJobs of the committed k8s/base render (what a cluster would return)."""
    docs = yaml.safe_load_all((ROOT / "k8s" / "base" / "cronjobs.yaml").read_text())
    out = {}
    for doc in docs:
        if doc and doc["kind"] == "CronJob":
            doc["metadata"]["namespace"] = NS
            doc["metadata"]["uid"] = f"uid-{doc['metadata']['name']}"
            out[doc["metadata"]["name"]] = doc
    return out


class FakeApi:
    def __init__(self) -> None:
        self.cronjobs = base_cronjobs()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.fail_create_with: int | None = None
        # batch version kubectl is offered CronJobs at (v1beta1 for kubectl < 1.21)
        self.cronjob_version = "v1"
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def status(self, code: int, reason: str) -> None:
                self.reply(
                    code, {"kind": "Status", "apiVersion": "v1", "code": code, "reason": reason}
                )

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                api.requests.append(("GET", path, None))
                discovery = api.discovery(path)
                if discovery is not None:
                    return self.reply(200, discovery)
                m = KUBECTL_CRONJOB_PATH.match(path)
                if not m or m.group(1) != api.cronjob_version_for(path):
                    return self.status(404, "NotFound")
                version, ns, name = m.groups()
                cj = api.cronjobs.get(name)
                if ns != NS or cj is None:
                    return self.status(404, "NotFound")
                self.reply(200, {**cj, "apiVersion": f"batch/{version}"})

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                api.requests.append(("POST", path, body))
                m = JOBS_PATH.match(path)
                if not m or m.group(1) != NS:
                    return self.status(404, "NotFound")
                if api.fail_create_with:
                    return self.status(api.fail_create_with, "Forbidden")
                name = body["metadata"]["name"]
                if name in api.jobs:
                    return self.status(409, "AlreadyExists")
                self.reply(201, api.store_job(body))

            def do_PUT(self) -> None:  # anything else is a verb the Role does not grant
                api.requests.append(("PUT", self.path, None))
                self.status(403, "Forbidden")

            do_PATCH = do_DELETE = do_PUT

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def cronjob_version_for(self, path: str) -> str:
        """Our client always reads batch/v1; kubectl reads the version discovery offers."""
        return "v1" if CRONJOB_PATH.match(path) else self.cronjob_version

    def discovery(self, path: str) -> dict[str, Any] | None:
        """The discovery documents kubectl reads before it GETs a CronJob."""
        gv = f"batch/{self.cronjob_version}"
        if path == "/version":
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-double"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/api/v1":
            return {"kind": "APIResourceList", "groupVersion": "v1", "resources": []}
        if path == "/apis":
            version = {"groupVersion": gv, "version": self.cronjob_version}
            group = {"name": "batch", "versions": [version], "preferredVersion": version}
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
        if path == f"/apis/{gv}":
            resources = [
                {"name": "cronjobs", "singularName": "cronjob", "namespaced": True,
                 "kind": "CronJob", "verbs": ["get"], "shortNames": ["cj"]},
                {"name": "jobs", "singularName": "job", "namespaced": True,
                 "kind": "Job", "verbs": ["create"]},
            ]  # fmt: skip
            return {"kind": "APIResourceList", "groupVersion": gv, "resources": resources}
        return None

    def store_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Persist a Job the way the API server does: uid plus the pod template labels."""
        job = json.loads(json.dumps(body))
        meta = job["metadata"]
        meta["uid"] = str(uuid.uuid4())
        pod_meta = job["spec"]["template"].setdefault("metadata", {})
        pod_meta.setdefault("labels", {}).update(
            {
                JOB_NAME_LABEL: meta["name"],
                CONTROLLER_UID_LABEL: meta["uid"],
                "job-name": meta["name"],
                "controller-uid": meta["uid"],
            }
        )
        self.jobs[meta["name"]] = job
        return job

    def cron_start(self, cronjob: str, scheduled_minute: int) -> dict[str, Any]:
        """What the CronJob controller does at a schedule: Job ``<cronjob>-<minute>``."""
        cj = self.cronjobs[cronjob]
        template = json.loads(json.dumps(cj["spec"]["jobTemplate"]))
        body = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {**template.get("metadata", {}), "name": f"{cronjob}-{scheduled_minute}"},
            "spec": template["spec"],
        }
        return self.store_job(body)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture()
def fake() -> Iterator[FakeApi]:
    api = FakeApi()
    api.thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()


@pytest.fixture()
def batch(fake: FakeApi) -> client.BatchV1Api:
    return client.BatchV1Api(client.ApiClient(client.Configuration(host=fake.url)))


def test_creates_job_from_cronjob_template(fake: FakeApi, batch: client.BatchV1Api) -> None:
    name = chain.start_next_stage("cp-pipeline-untar", NS, "0a1b2c3d4e5f", api=batch)
    assert name == "cp-pipeline-untar-0a1b2c3d"
    assert [(m, p) for m, p, _ in fake.requests] == [
        ("GET", f"/apis/batch/v1/namespaces/{NS}/cronjobs/cp-pipeline-untar"),
        ("POST", f"/apis/batch/v1/namespaces/{NS}/jobs"),
    ]
    body = fake.requests[1][2]
    assert body is not None
    meta = body["metadata"]
    assert meta["name"] == name
    assert meta["labels"]["cp-pipeline/chain-id"] == "0a1b2c3d4e5f"
    assert meta["labels"]["cp-pipeline/stage"] == "untar"
    assert meta["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "name": "cp-pipeline-untar",
            "uid": "uid-cp-pipeline-untar",
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]
    template = fake.cronjobs["cp-pipeline-untar"]["spec"]["jobTemplate"]["spec"]
    assert body["spec"]["backoffLimit"] == template["backoffLimit"]
    assert body["spec"]["activeDeadlineSeconds"] == template["activeDeadlineSeconds"]
    pod = body["spec"]["template"]
    assert pod["metadata"]["labels"]["cp-pipeline/chain-id"] == "0a1b2c3d4e5f"
    (container,) = pod["spec"]["containers"]
    (want,) = template["template"]["spec"]["containers"]
    assert container["image"] == want["image"]
    assert container["securityContext"] == want["securityContext"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CP_CHAIN_ID"] == {"name": "CP_CHAIN_ID", "value": "0a1b2c3d4e5f"}
    assert env["CP_NEXT_STAGE"]["value"] == "cp-pipeline-beam-launcher"
    assert env["CP_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_the_created_job_validates_strictly(fake: FakeApi, batch: client.BatchV1Api) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    chain.start_next_stage("cp-pipeline-queries", NS, "feedbeef", api=batch)
    body = fake.requests[-1][2]
    for version in ("1.30.0", "1.33.0"):
        kubernetes_validate.validate(body, version, strict=True)


def test_conflict_is_success_and_the_job_is_not_duplicated(
    fake: FakeApi, batch: client.BatchV1Api
) -> None:
    first = chain.start_next_stage("cp-pipeline-untar", NS, "abcdef12", api=batch)
    again = chain.start_next_stage("cp-pipeline-untar", NS, "abcdef12", api=batch)
    assert first == again
    assert list(fake.jobs) == [first]
    assert [m for m, _, _ in fake.requests] == ["GET", "POST", "GET", "POST"]


def test_other_errors_raise(fake: FakeApi, batch: client.BatchV1Api) -> None:
    with pytest.raises(chain.ChainError, match="404"):
        chain.start_next_stage("cp-pipeline-nope", NS, "abcdef12", api=batch)
    fake.fail_create_with = 403
    with pytest.raises(chain.ChainError, match="403"):
        chain.start_next_stage("cp-pipeline-untar", NS, "abcdef12", api=batch)


def test_chain_after_success_reads_the_environment(fake: FakeApi, batch: client.BatchV1Api) -> None:
    env = {
        "CP_NEXT_STAGE": "cp-pipeline-beam-launcher",
        "CP_NAMESPACE": NS,
        "CP_CHAIN_ID": "c0ffee00",
    }
    assert chain.chain_after_success(env, api=batch) == "cp-pipeline-beam-launcher-c0ffee00"
    assert chain.chain_after_success({"CP_NAMESPACE": NS}, api=batch) is None
    # Outside a cluster without an injected client: logged no-op, no request.
    before = len(fake.requests)
    assert chain.chain_after_success({"CP_NEXT_STAGE": "x", "CP_NAMESPACE": NS}) is None
    assert len(fake.requests) == before


def pod_env(job: dict[str, Any], namespace: str = NS) -> dict[str, str]:
    """The environment a pod of ``job`` sees: the kubelet resolves the downward-API refs."""
    pod = job["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": f"{job['metadata']['name']}-x"}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        path = item["valueFrom"]["fieldRef"]["fieldPath"]
        label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
        if path == "metadata.namespace":
            env[item["name"]] = namespace
        elif label:
            env[item["name"]] = labels.get(label.group(1), "")  # missing label -> ""
        else:
            raise AssertionError(f"unexpected fieldRef {path}")
    return env


def test_retries_of_a_cron_started_stage_create_one_downstream_job(
    fake: FakeApi, batch: client.BatchV1Api
) -> None:
    """backoffLimit retries: each pod of one Job asks for the same next Job; 409 = success."""
    mirror_job = fake.cron_start("cp-pipeline-mirror", 29_000_000)
    env = pod_env(mirror_job)
    assert env["CP_JOB_NAME"] == "cp-pipeline-mirror-29000000"
    assert env["CP_JOB_UID"] == mirror_job["metadata"]["uid"]
    assert "CP_CHAIN_ID" not in env
    first = chain.chain_after_success(env, api=batch)  # pod 1 (then, say, evicted)
    second = chain.chain_after_success(dict(env, HOSTNAME="other-pod"), api=batch)  # pod 2
    assert first == second == f"cp-pipeline-untar-{chain.job_chain_id(env['CP_JOB_UID'])}"
    assert sorted(fake.jobs) == sorted([mirror_job["metadata"]["name"], first])
    posts = [b for m, _, b in fake.requests if m == "POST"]
    assert [b["metadata"]["name"] for b in posts if b] == [first, first]  # 2nd answered 409

    # The chained untar Job carries the chain id on; its own retries start one launcher Job.
    untar_job = fake.jobs[first]
    chain_id = untar_job["metadata"]["labels"]["cp-pipeline/chain-id"]
    untar_env = pod_env(untar_job)
    assert untar_env["CP_CHAIN_ID"] == chain_id
    assert untar_env["CP_JOB_UID"] == untar_job["metadata"]["uid"]  # CP_CHAIN_ID wins over it
    launchers = {chain.chain_after_success(untar_env, api=batch) for _ in range(2)}
    assert launchers == {f"cp-pipeline-beam-launcher-{chain_id}"}
    (launcher,) = launchers
    assert fake.jobs[launcher]["metadata"]["labels"]["cp-pipeline/chain-id"] == chain_id
    assert len(fake.jobs) == 3

    # The next night's cron Job is a new chain.
    tomorrow = pod_env(fake.cron_start("cp-pipeline-mirror", 29_001_440))
    assert chain.chain_after_success(tomorrow, api=batch) != first
    assert len(fake.jobs) == 5


def test_chain_id_sources_in_order() -> None:
    uid = "5b0c7a5e-0f6c-4a51-9e53-1c2d3e4f5a6b"
    in_cluster = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    both = {**in_cluster, "CP_JOB_UID": uid, "CP_JOB_NAME": "cp-pipeline-mirror-1"}
    assert chain.chain_id_and_source(both) == (chain.job_chain_id(uid), "CP_JOB_UID")
    # A Job name reused after deletion has a new uid, hence a new chain (no stale 409).
    assert chain.job_chain_id(uid) != chain.job_chain_id(str(uuid.uuid4()))
    name_only = {**in_cluster, "CP_JOB_NAME": "cp-pipeline-mirror-1", "CP_JOB_UID": ""}
    assert chain.chain_id_and_source(name_only) == (
        chain.job_chain_id("cp-pipeline-mirror-1"),
        "CP_JOB_NAME",
    )
    assert chain.chain_id_and_source({**both, "CP_CHAIN_ID": "ABCDEF12"}) == (
        "abcdef12",
        "CP_CHAIN_ID",
    )
    assert re.fullmatch(r"[0-9a-f]{8}", chain.job_chain_id(uid))


def test_in_a_cluster_without_a_job_identity_chaining_fails(
    fake: FakeApi, batch: client.BatchV1Api
) -> None:
    env = {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "CP_NEXT_STAGE": "cp-pipeline-untar",
        "CP_NAMESPACE": NS,
        "CP_JOB_NAME": "",  # what the downward API gives a bare pod: the label is missing
        "CP_JOB_UID": "",
    }
    with pytest.raises(chain.ChainError, match="CP_JOB_UID"):
        chain.chain_after_success(env, api=batch)
    assert fake.requests == []


def test_outside_kubernetes_a_random_id_is_logged(capsys: pytest.CaptureFixture[str]) -> None:
    a, b = chain.current_chain_id({}), chain.current_chain_id({})
    assert a != b and re.fullmatch(r"[0-9a-f]{8}", a)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    logged = [line for line in lines if "chain_id_random" in line.values()]
    assert [line["chain_id"] for line in logged] == [a, b]
    assert chain.current_chain_id({"CP_CHAIN_ID": "ABCDEF12"}) == "abcdef12"


def kubectl_or_skip() -> str:
    """Path of kubectl; skip with the reason when absent (fail in CI, which installs it)."""
    path = shutil.which("kubectl")
    if path is None:
        reason = "kubectl is not on PATH (install it: .ci/install-kubectl.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def kubectl_minor(kubectl: str) -> int:
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return int(re.match(r"\d+", json.loads(out)["clientVersion"]["minor"]).group())  # type: ignore[union-attr]


def drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None and v != {}}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


@pytest.mark.parametrize("cronjob", ["cp-pipeline-untar", "cp-pipeline-beam-launcher"])
def test_our_job_equals_kubectl_create_job_from_cronjob(
    fake: FakeApi, batch: client.BatchV1Api, tmp_path: Path, cronjob: str
) -> None:
    """A real kubectl against the double: same Job apart from what chaining adds."""
    kubectl = kubectl_or_skip()
    minor = kubectl_minor(kubectl)
    if minor < 21:  # Debian bookworm's kubernetes-client 1.20 knows CronJob only as v1beta1
        fake.cronjob_version = "v1beta1"
    name = chain.start_next_stage(cronjob, NS, "0a1b2c3d", api=batch)
    ours = json.loads(json.dumps(fake.requests[-1][2]))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "double", "cluster": {"server": fake.url}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [
                    {"name": "double", "context": {"cluster": "double", "user": "nobody"}}
                ],
                "current-context": "double",
            }
        )
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}
    cmd = [kubectl, "create", "job", f"--from=cronjob/{cronjob}", name, "-n", NS]
    cmd += ["--dry-run=client", "-o", "json", f"--cache-dir={tmp_path / 'cache'}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    theirs = drop_nulls(json.loads(done.stdout))
    assert (
        "GET",
        f"/apis/batch/{fake.cronjob_version}/namespaces/{NS}/cronjobs/{cronjob}",
        None,
    ) in fake.requests

    # What chaining adds on purpose, removed from our Job:
    meta = ours["metadata"]
    assert meta["labels"].pop("cp-pipeline/chain-id") == "0a1b2c3d"
    pod = ours["spec"]["template"]
    assert pod["metadata"]["labels"].pop("cp-pipeline/chain-id") == "0a1b2c3d"
    for container in pod["spec"]["containers"]:
        chain_env = [e for e in container["env"] if e["name"] == "CP_CHAIN_ID"]
        assert chain_env == [{"name": "CP_CHAIN_ID", "value": "0a1b2c3d"}]
        container["env"] = [e for e in container["env"] if e["name"] != "CP_CHAIN_ID"]
    (owner,) = meta["ownerReferences"]
    assert owner.pop("blockOwnerDeletion") is False  # the API default; see chain.py
    if minor < 21:  # 1.20 pointed the owner at v1beta1 and did not set controller
        (their_owner,) = theirs["metadata"]["ownerReferences"]
        assert their_owner == {
            "apiVersion": "batch/v1beta1",
            "kind": "CronJob",
            "name": cronjob,
            "uid": f"uid-{cronjob}",
        }
        their_owner.update(apiVersion="batch/v1", controller=True)
    assert drop_nulls(ours) == {k: v for k, v in theirs.items() if k != "status"}


def test_job_names_stay_valid() -> None:
    long = "x" * 60
    name = chain.job_name(long, "0123456789")
    assert len(name) == 63 and name.endswith("-01234567")
    with pytest.raises(ValueError):
        chain.job_name("a", "--")


def test_code_uses_exactly_the_permissions_the_chart_grants(
    fake: FakeApi, batch: client.BatchV1Api
) -> None:
    """Calls observed on the wire == API_PERMISSIONS == every chaining Role in k8s/base."""
    chain.start_next_stage("cp-pipeline-untar", NS, "abcdef12", api=batch)
    verbs = {"GET": "get", "POST": "create"}
    observed = set()
    for method, path, _ in fake.requests:
        resource = "cronjobs" if CRONJOB_PATH.match(path) else "jobs"
        observed.add(("batch", resource, verbs[method]))
    assert observed == chain.API_PERMISSIONS
    roles = [
        d
        for d in yaml.safe_load_all((ROOT / "k8s" / "base" / "rbac.yaml").read_text())
        if d and d["kind"] == "Role"
    ]
    assert roles
    for role in roles:
        granted = {
            (g, r, v)
            for rule in role["rules"]
            for g in rule["apiGroups"]
            for r in rule["resources"]
            for v in rule["verbs"]
        }
        assert granted == chain.API_PERMISSIONS
        # get is limited to the next stage's CronJob, the one CP_NEXT_STAGE names
        (get_rule,) = [r for r in role["rules"] if r["resources"] == ["cronjobs"]]
        stage = role["metadata"]["labels"]["cp-pipeline/stage"]
        cronjob = base_cronjobs()[role["metadata"]["name"]]
        (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        next_stage = {e["name"]: e.get("value") for e in container["env"]}["CP_NEXT_STAGE"]
        assert get_rule["resourceNames"] == [next_stage], stage
