"""A real BigQuery REST API for tests: ``bqemulator`` (DuckDB + sqlglot) on 127.0.0.1.

bqemulator pins an older sqlglot than ours, so it runs from its own virtual environment,
created with uv under ``var/cache/bqemulator-<version>/`` (ignored by git; override the
place with ``CP_TEST_CACHE``) and reused by later sessions (~20 s once, then ~3 s to
start). Offline it cannot start as published: it downloads DuckDB's ``spatial`` extension
at start-up. The environment therefore installs that extension from PyPI's
``duckdb-extension-spatial`` into a DuckDB home of its own (``INSTALL '<file>'``; the
server then finds it installed), plus ``numpy``, which it imports without declaring.

Fixtures (load with ``pytest_plugins = ["tests.bq_server"]``):

* ``bq_server`` (session): the emulator subprocess on free ports of 127.0.0.1, stopped at
  the end of the session; its ``gs://`` load and export URIs resolve in the data folder of
  a disk-backed GCS emulator started beside it, so Beam's file loads (written to
  ``gs://`` through the GCS API) are read by the BigQuery load jobs they trigger.
  Without network for the first install the fixture skips with the reason; under
  ``CI=true`` it fails instead.
* ``bq_env``: points the code under test at both servers for one test
  (``BIGQUERY_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``, anonymous credentials for
  Beam and for google-auth) and refuses non-loopback connections.

Known gaps of bqemulator 1.4.0 are listed in ``GAPS`` (also in docs/operations.md).
Every client call made by the tests has a short deadline: on some server errors the client
would otherwise retry for ten minutes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gcp_storage_emulator.storage import Storage
from google.auth.credentials import AnonymousCredentials

from tests.gcs_server import HOST, PROJECT, _GcsDownloadsHandler, _HttpServer, _loopback_only

REPO = Path(__file__).resolve().parents[1]
BQEMU_VERSION = "1.4.0"
# duckdb pinned to the version whose spatial extension PyPI ships as a package.
BQEMU_PACKAGES = (
    f"bqemulator=={BQEMU_VERSION}",
    "duckdb==1.5.5",
    "duckdb-extension-spatial==1.5.5",
    "numpy",
)
START_TIMEOUT_S = 60.0

# What bqemulator 1.4.0 lacks that our code uses; each test that meets one names it.
GAPS = {
    "script_parameters": (
        "bqemulator 1.4.0: query parameters inside a multi-statement script are not bound "
        "('Invalid Input Error: Values were not provided for the following prepared "
        "statement parameters: ...'); the tests inline them as literals"
    ),
    "json_bytes": (
        "bqemulator 1.4.0: a JSON load stores a BYTES value's base64 text instead of the "
        "decoded bytes (Beam's file loads write BYTES as base64); the tests decode it"
    ),
    "reader_isolation": (
        "bqemulator 1.4.0 runs a transaction's statements on the live tables and restores "
        "snapshots on rollback: a concurrent reader can see the state between a DELETE and "
        "its INSERT (BigQuery shows readers the state before or after the COMMIT)"
    ),
    "net_functions": (
        "bqemulator 1.4.0 has no NET.* functions (NET.REG_DOMAIN in "
        "10_merged_reduced_scans.sql); the SQL is checked by sqlglot and on DuckDB instead"
    ),
    "unnest_struct_parameter": (
        "bqemulator 1.4.0: SELECT * FROM UNNEST(@array_of_structs) returns one column "
        "('Binder Error: table ... has N columns but 1 values were supplied')"
    ),
}


# Short deadlines for every call the tests make: on a server error the client would retry
# for ten minutes by default (toolchain-notes §5).
SHORT_RETRY_S = 30.0


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _type_sql(ptype: dict[str, Any]) -> str:
    kind = ptype["type"]
    if kind == "ARRAY":
        return f"ARRAY<{_type_sql(ptype['arrayType'])}>"
    if kind == "STRUCT":
        fields = ", ".join(f"{f['name']} {_type_sql(f['type'])}" for f in ptype["structTypes"])
        return f"STRUCT<{fields}>"
    return str(kind)


def literal(ptype: dict[str, Any], pvalue: dict[str, Any] | None) -> str:
    """A BigQuery literal for a query parameter given in its API form (type, value)."""
    kind = ptype["type"]
    pvalue = pvalue or {}
    if kind == "ARRAY":
        items = [literal(ptype["arrayType"], v) for v in pvalue.get("arrayValues") or []]
        return f"{_type_sql(ptype)}[{', '.join(items)}]"
    if kind == "STRUCT":
        values = pvalue.get("structValues") or {}
        fields = [
            f"{literal(f['type'], values.get(f['name']))} AS {f['name']}"
            for f in ptype["structTypes"]
        ]
        return f"STRUCT({', '.join(fields)})"
    value = pvalue.get("value")
    if value is None:
        return f"CAST(NULL AS {kind})"
    if kind in ("INT64", "INTEGER", "FLOAT64", "FLOAT", "BOOL", "BOOLEAN"):
        return str(value).upper() if kind.startswith("BOOL") else str(value)
    if kind == "STRING":
        return _quote(str(value))
    return f"CAST({_quote(str(value))} AS {kind})"


def inline_parameters(sql: str, params: list[Any]) -> str:
    """``sql`` with each ``@name`` outside quotes replaced by the parameter's literal."""
    values = {}
    for p in params:
        api = p.to_api_repr()
        values[api["name"]] = literal(api["parameterType"], api.get("parameterValue"))
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            j = i + 1
            while j < n and sql[j] != ch:
                j += 2 if sql[j] == "\\" else 1
            out.append(sql[i : j + 1])
            i = j + 1
        elif ch == "@" and i + 1 < n and (sql[i + 1].isalnum() or sql[i + 1] == "_"):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            name = sql[i + 1 : j]
            if name not in values:
                raise KeyError(f"query parameter @{name} not given")
            out.append(values[name])
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def is_script(sql: str) -> bool:
    """A multi-statement transaction script (how our code submits one)."""
    return sql.lstrip().upper().startswith("BEGIN TRANSACTION")


def cache_root() -> Path:
    """Where the emulator environment is kept between sessions."""
    base = os.environ.get("CP_TEST_CACHE") or str(REPO / "var" / "cache")
    return Path(base) / f"bqemulator-{BQEMU_VERSION}"


def _uv() -> str:
    found = shutil.which("uv")
    if found:
        return found
    out = subprocess.run(
        [str(REPO / "scripts" / "ensure-uv.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"uv not available: {out.stderr.strip()[-300:]}")
    return out.stdout.strip().splitlines()[-1]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=600)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[:3])} … failed: {' | '.join(tail)}")


def ensure_environment(root: Path) -> Path:
    """The emulator's venv python (created once; a stamp file marks a finished install)."""
    root.mkdir(parents=True, exist_ok=True)
    python = root / "venv" / "bin" / "python"
    stamp = root / "ready"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel session waits for the same install
        if stamp.exists() and python.exists():
            return python
        shutil.rmtree(root / "venv", ignore_errors=True)
        uv = _uv()
        _run([uv, "venv", "--quiet", "--python", sys.executable, str(root / "venv")])
        _run([uv, "pip", "install", "--quiet", "--python", str(python), *BQEMU_PACKAGES])
        home = root / "home"
        home.mkdir(exist_ok=True)
        install = (
            "import pathlib, duckdb, duckdb_extension_spatial as s\n"
            "f = next(pathlib.Path(s.__file__).parent.rglob('spatial.duckdb_extension'))\n"
            "duckdb.connect().execute(f\"INSTALL '{f}'\")\n"
        )
        _run([str(python), "-c", install], env={**os.environ, "HOME": str(home)})
        stamp.write_text(" ".join(BQEMU_PACKAGES) + "\n")
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class BigQueryServer:
    """The running emulator and the disk-backed GCS emulator its gs:// URIs resolve in."""

    endpoint: str  # http://127.0.0.1:PORT
    gcs_endpoint: str
    log: Path
    project: str = PROJECT

    def client(self, project: str | None = None) -> Any:
        from google.cloud import bigquery

        return bigquery.Client(
            project=project or self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def gcs_client(self) -> Any:
        from google.cloud import storage as gcs  # type: ignore[attr-defined]

        return gcs.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.gcs_endpoint},
        )

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _wait_ready(proc: subprocess.Popen[bytes], endpoint: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    url = f"{endpoint}/bigquery/v2/projects/{PROJECT}/datasets"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError(f"bqemulator exited with {proc.returncode}: {' | '.join(tail)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"bqemulator not ready after {START_TIMEOUT_S:.0f} s")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"BigQuery emulator unavailable under CI: {reason}")
    pytest.skip(f"BigQuery emulator unavailable: {reason}")


@pytest.fixture(scope="session")
def bq_server() -> Iterator[BigQueryServer]:
    try:
        python = ensure_environment(cache_root())
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"could not install {' '.join(BQEMU_PACKAGES)} with uv: {exc}")
    with tempfile.TemporaryDirectory(prefix="bq-emulator-") as tmp:
        gcs_dir = Path(tmp) / "gcs"
        store = Storage(use_memory_fs=False, data_dir=str(gcs_dir))
        httpd = _HttpServer((HOST, 0), lambda *args: _GcsDownloadsHandler(store, *args))
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        port = _free_port()
        endpoint = f"http://{HOST}:{port}"
        log = Path(tmp) / "bqemulator.log"
        env = {
            **os.environ,
            "HOME": str(cache_root() / "home"),  # where the spatial extension is installed
            "BQEMU_REST_HOST": HOST,
            "BQEMU_REST_PORT": str(port),
            "BQEMU_GRPC_HOST": HOST,
            "BQEMU_GRPC_PORT": str(_free_port()),
            "BQEMU_DEFAULT_PROJECT_ID": PROJECT,
            "BQEMU_GCS_LOCAL_ROOT": str(gcs_dir / ".cloudstorage"),  # the GCS store's objects
            "BQEMU_ENABLE_FORMAT_EXTENSIONS": "false",  # avro: another download
            "BQEMU_LOG_LEVEL": "warning",
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(python), "-m", "bqemulator", "start"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            _wait_ready(proc, endpoint, log)
        except RuntimeError as exc:
            proc.kill()
            proc.wait()
            httpd.shutdown()
            httpd.server_close()
            _unavailable(str(exc))
        try:
            yield BigQueryServer(endpoint, f"http://{HOST}:{httpd.server_address[1]}", log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)


@contextlib.contextmanager
def emulator_environment(server: BigQueryServer) -> Iterator[BigQueryServer]:
    """Point BigQuery and GCS clients (ours and Beam's) at the test servers meanwhile."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIGQUERY_EMULATOR_HOST", server.endpoint)
        mp.setenv("STORAGE_EMULATOR_HOST", server.gcs_endpoint)
        mp.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
        mp.setenv("NO_GCE_CHECK", "true")
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        import google.auth
        from apache_beam.internal.gcp import auth as beam_auth
        from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client
        from apitools.base.py import base_api

        # Beam: anonymous apitools client (toolchain-notes §4) and an anonymous
        # google-cloud-bigquery client inside its BigQuery wrapper.
        mp.setattr(beam_auth._Credentials, "_credentials_init", True)
        mp.setattr(beam_auth._Credentials, "_credentials", None)
        mp.setattr(base_api, "_SkipGetCredentials", lambda: True)
        mp.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), PROJECT))
        # Restored afterwards (the code under test points it at the emulator).
        mp.setattr(
            bigquery_v2_client.BigqueryV2, "BASE_URL", bigquery_v2_client.BigqueryV2.BASE_URL
        )
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

        def connect(sock: socket.socket, address: Any) -> None:
            _loopback_only(address)
            return real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            _loopback_only(address)
            return real_connect_ex(sock, address)

        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        _short_deadlines_and_script_literals(mp)
        yield server


@pytest.fixture
def bq_env(bq_server: BigQueryServer) -> Iterator[BigQueryServer]:
    """``emulator_environment`` for one test."""
    with emulator_environment(bq_server) as server:
        yield server


def _short_deadlines_and_script_literals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``Client.query`` gets short retry deadlines; the parameters of a transaction
    script are bound as literals (``GAPS["script_parameters"]``): the statements submitted
    are otherwise exactly those our code builds."""
    from google.api_core.retry import Retry
    from google.cloud import bigquery

    real_query = bigquery.Client.query

    def query(self: Any, sql: str, job_config: Any = None, *args: Any, **kwargs: Any) -> Any:
        if job_config is not None and job_config.query_parameters and is_script(sql):
            sql = inline_parameters(sql, list(job_config.query_parameters))
            job_config = bigquery.QueryJobConfig.from_api_repr(job_config.to_api_repr())
            job_config.query_parameters = []
        kwargs.setdefault("retry", Retry(timeout=SHORT_RETRY_S))
        kwargs.setdefault("job_retry", None)
        return real_query(self, sql, job_config, *args, **kwargs)

    monkeypatch.setattr(bigquery.Client, "query", query)
