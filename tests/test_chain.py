"""services/common/chain.py against a Kubernetes API double (http.server on 127.0.0.1).

The double answers exactly the two calls the chart's Role allows: GET one CronJob and
POST a Job; it records every request so the path, namespace and body can be checked.
"""

from __future__ import annotations

import json
import re
import threading
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
                m = CRONJOB_PATH.match(path)
                if not m:
                    return self.status(404, "NotFound")
                ns, name = m.groups()
                cj = api.cronjobs.get(name)
                if ns != NS or cj is None:
                    return self.status(404, "NotFound")
                self.reply(200, cj)

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
                api.jobs[name] = body
                self.reply(201, body)

            def do_PUT(self) -> None:  # anything else is a verb the Role does not grant
                api.requests.append(("PUT", self.path, None))
                self.status(403, "Forbidden")

            do_PATCH = do_DELETE = do_PUT

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

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


def test_a_new_chain_gets_a_fresh_id() -> None:
    a, b = chain.current_chain_id({}), chain.current_chain_id({})
    assert a != b and re.fullmatch(r"[0-9a-f]{8}", a)
    assert chain.current_chain_id({"CP_CHAIN_ID": "ABCDEF12"}) == "abcdef12"


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
