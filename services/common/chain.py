"""Stage chaining: a stage that succeeded starts the next stage's CronJob as a Job now.

The next stage is named by ``$CP_NEXT_STAGE`` (the Helm chart sets it to the next
CronJob's name). The Job is made from the CronJob's ``spec.jobTemplate`` the way
``kubectl create job --from=cronjob/...`` does it, plus:

* name ``<cronjob>-<chain id>`` (8 hex characters): a retried stage creates the *same*
  Job, and Kubernetes answers 409 AlreadyExists, which counts as success (idempotent);
* labels ``cp-pipeline/chain-id`` and ``cp-pipeline/stage`` on the Job and its pods, and
  ``$CP_CHAIN_ID`` in every container, so the whole nightly chain shares one id;
* annotation ``cronjob.kubernetes.io/instantiate: manual``;
* an ownerReference to the CronJob (``controller: true``, ``blockOwnerDeletion: false``:
  blocking would need ``update cronjobs/finalizers``, which the chart does not grant),
  so the CronJob's history limits and deletion cover chained Jobs too.

The chain id (``current_chain_id``) is, in this order: ``$CP_CHAIN_ID`` (set on every
chained Job, so a whole night shares the id of the Job that started it); else derived
from this pod's Job, which every retry of the pod shares: ``$CP_JOB_UID`` (the chart sets
it from the pod label ``batch.kubernetes.io/controller-uid``; unique even when a Job name
is reused) or ``$CP_JOB_NAME`` (label ``batch.kubernetes.io/job-name``). Only outside
Kubernetes (no ``$KUBERNETES_SERVICE_HOST``) does a run get a random id, and it logs
that; in a cluster with no Job identity chaining fails with the reason instead of
creating a Job a retry could not find again.

API calls, exactly: ``get`` one CronJob and ``create`` a Job (``API_PERMISSIONS``; the
chart's Role grants these and nothing else, checked by tests/test_chain.py).

Example (outside a cluster, with no next stage, nothing happens):
    >>> chain_after_success({}) is None
    True
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping
from typing import Any

from services.common.logsetup import get_logger

CHAIN_ID_LABEL = "cp-pipeline/chain-id"
STAGE_LABEL = "cp-pipeline/stage"
INSTANTIATE_ANNOTATION = "cronjob.kubernetes.io/instantiate"
CHAIN_ID_ENV = "CP_CHAIN_ID"
NEXT_STAGE_ENV = "CP_NEXT_STAGE"
NAMESPACE_ENV = "CP_NAMESPACE"
JOB_UID_ENV = "CP_JOB_UID"
JOB_NAME_ENV = "CP_JOB_NAME"
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# (API group, resource, verb) of every call this module makes.
API_PERMISSIONS = frozenset({("batch", "cronjobs", "get"), ("batch", "jobs", "create")})
_MAX_NAME = 63


class ChainError(RuntimeError):
    """The next stage could not be started (anything but 409 AlreadyExists)."""


def new_chain_id() -> str:
    """A fresh chain id: 8 lowercase hex characters (valid in names and label values)."""
    return uuid.uuid4().hex[:8]


def job_chain_id(job_identity: str) -> str:
    """The chain id a Job starts: 8 hex characters of SHA-256 of its uid or name."""
    return hashlib.sha256(job_identity.encode()).hexdigest()[:8]


def chain_id_and_source(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(chain id, where it came from)``; see the module docstring for the order.

    Raises ChainError inside Kubernetes when neither the chain nor the Job is known.
    """
    env = os.environ if environ is None else environ
    given = (env.get(CHAIN_ID_ENV) or "").strip().lower()
    if given:
        return given, CHAIN_ID_ENV
    for name in (JOB_UID_ENV, JOB_NAME_ENV):
        value = (env.get(name) or "").strip()
        if value:
            return job_chain_id(value), name
    if env.get("KUBERNETES_SERVICE_HOST"):
        raise ChainError(
            f"no chain id: {CHAIN_ID_ENV}, {JOB_UID_ENV} and {JOB_NAME_ENV} are all unset "
            "(not a pod of a Job?); a random id would let a retry start a second Job"
        )
    return new_chain_id(), "random"


def current_chain_id(environ: Mapping[str, str] | None = None) -> str:
    """The chain this run belongs to (random, logged, only outside Kubernetes)."""
    chain_id, source = chain_id_and_source(environ)
    if source == "random":
        get_logger("chain").warning(
            "chain_id_random",
            chain_id=chain_id,
            reason=f"outside Kubernetes and {CHAIN_ID_ENV}/{JOB_UID_ENV}/{JOB_NAME_ENV} unset",
        )
    return chain_id


def job_name(cronjob: str, chain_id: str) -> str:
    """``<cronjob>-<first 8 chars of chain id>``, at most 63 characters."""
    short = "".join(ch for ch in chain_id.lower() if ch.isalnum())[:8]
    if not short:
        raise ValueError(f"chain id without letters or digits: {chain_id!r}")
    head = cronjob[: _MAX_NAME - len(short) - 1].rstrip("-")
    return f"{head}-{short}"


def build_job(cronjob: Mapping[str, Any], chain_id: str) -> dict[str, Any]:
    """The Job (as an API dict) that starts ``cronjob`` for chain ``chain_id``."""
    meta = cronjob["metadata"]
    template = cronjob["spec"]["jobTemplate"]
    stage = (meta.get("labels") or {}).get(STAGE_LABEL, meta["name"])
    tmeta = template.get("metadata") or {}
    labels = {**(tmeta.get("labels") or {}), CHAIN_ID_LABEL: chain_id, STAGE_LABEL: stage}
    annotations = {**(tmeta.get("annotations") or {}), INSTANTIATE_ANNOTATION: "manual"}
    spec = dict(template["spec"])
    pod = dict(spec["template"])
    pod_meta = dict(pod.get("metadata") or {})
    pod_meta["labels"] = {
        **(pod_meta.get("labels") or {}),
        CHAIN_ID_LABEL: chain_id,
        STAGE_LABEL: stage,
    }
    pod["metadata"] = pod_meta
    pod_spec = dict(pod["spec"])
    containers = []
    for container in pod_spec["containers"]:
        env = [e for e in container.get("env") or [] if e.get("name") != CHAIN_ID_ENV]
        containers.append({**container, "env": [*env, {"name": CHAIN_ID_ENV, "value": chain_id}]})
    pod_spec["containers"] = containers
    pod["spec"] = pod_spec
    spec["template"] = pod
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(meta["name"], chain_id),
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": spec,
    }


def start_next_stage(next_cronjob: str, namespace: str, chain_id: str, api: Any = None) -> str:
    """Create the Job for ``next_cronjob``; return its name. 409 AlreadyExists is success.

    ``api`` is a ``kubernetes.client.BatchV1Api`` (default: one from the loaded config).
    Raises ChainError for any other API failure (e.g. 403, 404 of the CronJob).
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    log: Any = get_logger("chain", next_stage=next_cronjob, namespace=namespace, chain_id=chain_id)
    batch = api if api is not None else client.BatchV1Api()
    serializer = batch.api_client if hasattr(batch, "api_client") else client.ApiClient()
    try:
        cronjob = batch.read_namespaced_cron_job(next_cronjob, namespace)
    except ApiException as exc:
        raise ChainError(
            f"cannot read CronJob {namespace}/{next_cronjob}: HTTP {exc.status} {exc.reason}"
        ) from exc
    body = build_job(serializer.sanitize_for_serialization(cronjob), chain_id)
    name = body["metadata"]["name"]
    job = client.V1Job.from_dict(body)
    if job is None:  # from_dict is typed Optional; a non-empty dict always gives a Job
        raise ChainError(f"cannot build Job {namespace}/{name}")
    try:
        batch.create_namespaced_job(namespace, job)
    except ApiException as exc:
        if exc.status == 409:
            log.info("next_stage_already_started", job=name)
            return name
        raise ChainError(
            f"cannot create Job {namespace}/{name}: HTTP {exc.status} {exc.reason}"
        ) from exc
    log.info("next_stage_started", job=name)
    return name


def _namespace(env: Mapping[str, str]) -> str:
    if env.get(NAMESPACE_ENV):
        return env[NAMESPACE_ENV]
    try:
        with open(SA_NAMESPACE_FILE, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ChainError(f"${NAMESPACE_ENV} unset and {SA_NAMESPACE_FILE} unreadable") from exc


def chain_after_success(environ: Mapping[str, str] | None = None, api: Any = None) -> str | None:
    """Call after a successful run: start ``$CP_NEXT_STAGE`` if set; return the Job name.

    No-op (None, one log line) when ``$CP_NEXT_STAGE`` is unset, or when not in a cluster
    (no ``$KUBERNETES_SERVICE_HOST``) and no ``api`` is given. Every retry of one Job's pod
    asks for the same Job name (see ``chain_id_and_source``).
    """
    env = os.environ if environ is None else environ
    log: Any = get_logger("chain")
    next_cronjob = (env.get(NEXT_STAGE_ENV) or "").strip()
    if not next_cronjob:
        log.info("chain_end", reason=f"{NEXT_STAGE_ENV} unset")
        return None
    if api is None:
        if not env.get("KUBERNETES_SERVICE_HOST"):
            log.info("chain_skipped", next_stage=next_cronjob, reason="not in a cluster")
            return None
        from kubernetes import client, config

        config.load_incluster_config()
        api = client.BatchV1Api()
    return start_next_stage(next_cronjob, _namespace(env), current_chain_id(env), api=api)
