"""Worker processes forked from the launcher, so Beam and the pipeline's modules are
imported once per run instead of once per worker.

A local run with worker processes (``--workers N``) has Beam's FnApiRunner start
``python -m services.beam_launcher.worker`` per worker (the *guard*,
:mod:`services.beam_launcher.worker`). A fresh SDK worker then imports Beam, gRPC,
pyarrow and the pipeline's modules before it parses a line: ~1.5 CPU-s per worker on a
quiet machine, 2.8 s while another job shares the cores (launcher README). Instead:

* before the pipeline starts, the launcher (which has imported all of that already, and
  runs no thread of its own yet) forks a *zygote*: a single-threaded copy of itself that
  listens on a Unix socket whose path it puts in :data:`ZYGOTE_ENV`;
* each guard connects to that socket and sends its environment (Beam's control and
  logging addresses, the pipeline options) with its stdin, stdout and stderr; the zygote
  forks an SDK worker with those, answers its pid, and later its exit code;
* a forked worker starts from the launcher's memory (copy-on-write), with logging put
  back to how a fresh process has it, and runs the same :func:`worker.sdk_main`.

Lifetime: the zygote dies with the launcher and every worker with the zygote
(``PR_SET_PDEATHSIG``), the guard also kills its worker when the launcher is gone, and
:func:`services.beam_launcher.worker.stop_workers` kills them all as descendants of the
launcher. ``CP_FORK_WORKERS=0`` turns forking off (each guard starts a fresh worker);
so does a guard that finds no zygote, as on any runner other than the local one.

Example:
    >>> fork_enabled({"CP_FORK_WORKERS": "0"}), fork_enabled({})
    (False, True)
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

ZYGOTE_ENV = "CP_WORKER_ZYGOTE"
FORK_ENV = "CP_FORK_WORKERS"
POLL_S = 0.05  # how soon the zygote reports an ended worker, or sees the launcher gone
_HEADER = 4  # bytes of the big-endian length before a request's JSON
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
ZYGOTE_NAME = "launcher-zygote"  # kernel names (comm) of the zygote and of a forked worker
WORKER_NAME = "launcher-worker"
# Kernel thread names of gRPC's core (timer manager, event engine, lifeguard, executors).
GRPC_THREADS = ("grpc", "event_engine", "lifeguard", "default-executo", "resolver-execut")


def fork_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Fork workers unless ``CP_FORK_WORKERS`` is ``0``/``false``/``no``/``off``."""
    return env.get(FORK_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def _prctl(option: int, arg: int | bytes) -> None:
    """``prctl(option, arg)`` on Linux; elsewhere, or when it fails, nothing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)


def die_with_parent() -> None:
    """SIGKILL this process when its parent ends (Linux ``PR_SET_PDEATHSIG``)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def set_name(name: str) -> None:
    """This thread's kernel name (``ps -o comm``, ``top``; 15 bytes at most)."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


class Zygote:
    """The launcher's handle on its zygote: :meth:`start` forks it, :meth:`close` ends it."""

    def __init__(self, pid: int, folder: str) -> None:
        self.pid = pid
        self.folder = folder

    @classmethod
    def start(cls, worker_main: Callable[[], None]) -> Zygote:
        """Fork the zygote; it forks one process running ``worker_main`` per request.

        Call from the main thread with no other Python thread running (the child keeps
        only the calling thread). Sets :data:`ZYGOTE_ENV` for the guards Beam starts.
        """
        folder = tempfile.mkdtemp(prefix="cp-zygote-")
        path = os.path.join(folder, "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
            with contextlib.suppress(Exception):
                stream.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the zygote: never returns into the launcher's code
            code = 0
            try:
                _serve(listener, parent, worker_main)
            except BaseException:
                code = 1
                with contextlib.suppress(Exception):
                    traceback.print_exc()
            finally:
                os._exit(code)
        listener.close()
        os.environ[ZYGOTE_ENV] = path
        return cls(pid, folder)

    def close(self) -> None:
        """End the zygote (its running workers go with it) and remove its socket."""
        if os.environ.get(ZYGOTE_ENV, "").startswith(self.folder):
            del os.environ[ZYGOTE_ENV]
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        shutil.rmtree(self.folder, ignore_errors=True)


def _thread_names() -> list[str]:
    """The kernel's names of this process's threads (``/proc/self/task/*/comm``)."""
    names = []
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as fh:
                names.append(fh.read().strip())
    return names


def fork_blocker() -> str | None:
    """Why this process must not fork workers now, or None when it may.

    A forked child keeps only the calling thread, while the state the other threads own
    stays behind as it was: a Beam thread pool whose idle threads are gone (its next
    task waits forever) or gRPC's core with its poller and timer threads gone (a worker
    forked after the process ran a pipeline with workers hung in its first gRPC call).
    So: the main thread only, no other Python thread, no gRPC thread. A launcher has
    none when its pipeline starts; a process that already ran pipelines (a test session)
    may, and then its workers start afresh.

    >>> fork_blocker() is None or isinstance(fork_blocker(), str)
    True
    """
    if threading.current_thread() is not threading.main_thread():
        return "not called from the main thread"
    others = sorted(t.name for t in threading.enumerate() if t is not threading.current_thread())
    if others:
        return f"other Python threads running ({', '.join(others[:3])})"
    grpc = sorted({n for n in _thread_names() if n.startswith(GRPC_THREADS)})
    if grpc:
        return f"gRPC threads running ({', '.join(grpc)})"
    return None


@contextlib.contextmanager
def forking(worker_main: Callable[[], None], enabled: bool = True) -> Iterator[Zygote | None]:
    """A zygote for the duration of the block, or None when ``enabled`` is false or
    :func:`fork_blocker` gives a reason (the workers then start afresh)."""
    if not enabled or fork_blocker() is not None:
        yield None
        return
    zygote = Zygote.start(worker_main)
    try:
        yield zygote
    finally:
        zygote.close()


def _serve(listener: socket.socket, parent: int, worker_main: Callable[[], None]) -> None:
    """The zygote's loop: fork a worker per connection, report each one's exit code on
    its connection, end when the launcher is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher stops us itself
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent()
    set_name(ZYGOTE_NAME)
    if os.getppid() != parent:
        return
    gc.freeze()  # the launcher's objects: never collected here, pages stay shared
    conns: dict[int, socket.socket] = {}
    with selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ)
        while os.getppid() == parent:
            for _key, _events in sel.select(POLL_S):
                conn, _addr = listener.accept()
                try:
                    pid = _fork_worker(conn, listener, conns, worker_main)
                except (OSError, ValueError):
                    conn.close()
                    continue
                conns[pid] = conn
            _reap(conns)


def _reap(conns: dict[int, socket.socket]) -> None:
    """Tell the guards of the workers that ended their exit codes."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = conns.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(_line({"exit": os.waitstatus_to_exitcode(status)}))
            conn.close()


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _read_exact(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(n - got)
        if not chunk:
            raise ValueError("request cut short")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _fork_worker(
    conn: socket.socket,
    listener: socket.socket,
    conns: dict[int, socket.socket],
    worker_main: Callable[[], None],
) -> int:
    """Read one request (header + stdio fds, then the environment) and fork its worker."""
    head, fds, _flags, _addr = socket.recv_fds(conn, _HEADER, 3)
    try:
        if len(fds) != 3 or len(head) != _HEADER:
            raise ValueError("a request carries its length and three descriptors")
        env = json.loads(_read_exact(conn, int.from_bytes(head, "big")))["env"]
        pid = os.fork()
        if pid == 0:
            _become_worker(env, fds, [conn, listener, *conns.values()], worker_main)
    finally:
        for fd in fds:
            os.close(fd)
    conn.sendall(_line({"pid": pid}))
    return pid


def _become_worker(
    env: dict[str, str],
    fds: list[int],
    sockets: list[socket.socket],
    worker_main: Callable[[], None],
) -> None:
    """In the forked child: the request's stdio and environment, then ``worker_main``."""
    code = 1
    try:
        for sock in sockets:  # a guard sees EOF when the zygote ends, not held open here
            sock.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        die_with_parent()
        set_name(WORKER_NAME)
        os.environ.clear()
        os.environ.update(env)
        tempfile.tempdir = None  # from the request's TMPDIR, as in a fresh process
        from services.common import logsetup

        logsetup.forget_configuration()
        worker_main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


class ForkedWorker:
    """A guard's handle on a worker the zygote forked; the subset of
    :class:`subprocess.Popen` the guard uses (``stdout``, ``stderr``, ``pid``, ``poll``,
    ``wait``, ``kill``)."""

    stdout: IO[bytes]
    stderr: IO[bytes]

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._buf = b""
        self.returncode: int | None = None
        try:
            self._sock.connect(path)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            null = os.open(os.devnull, os.O_RDONLY)
            try:
                payload = json.dumps({"env": dict(env)}).encode()
                socket.send_fds(self._sock, [len(payload).to_bytes(_HEADER, "big")],
                                [null, out_w, err_w])  # fmt: skip
                self._sock.sendall(payload)
            finally:
                for fd in (null, out_w, err_w):
                    os.close(fd)
            self.stdout = os.fdopen(out_r, "rb")
            self.stderr = os.fdopen(err_r, "rb")
            reply = self._message(None)
        except BaseException:
            self._sock.close()
            raise
        if reply is None or "pid" not in reply:
            raise OSError("the zygote did not start a worker")
        self.pid = int(reply["pid"])

    def _message(self, timeout: float | None) -> dict[str, Any] | None:
        """The zygote's next line (None at EOF); TimeoutError when none came in time."""
        self._sock.settimeout(timeout)
        while b"\n" not in self._buf:
            chunk = self._sock.recv(4096)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return dict(json.loads(line))

    def wait(self, timeout: float | None = None) -> int:
        """The worker's exit code (negative: killed by that signal); a zygote gone
        without saying counts as SIGKILL. Raises :class:`TimeoutError` after ``timeout``."""
        if self.returncode is None:
            try:
                msg = self._message(timeout)
            except (TimeoutError, BlockingIOError):  # BlockingIOError: timeout 0
                raise TimeoutError(f"worker {self.pid} still running") from None
            except OSError:
                msg = None
            self.returncode = int(msg["exit"]) if msg and "exit" in msg else -signal.SIGKILL
            self._sock.close()
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except TimeoutError:
            return None

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)


def forked_worker(env: Mapping[str, str] = os.environ) -> ForkedWorker | None:
    """A worker from the launcher's zygote, or None when there is none to ask (no
    :data:`ZYGOTE_ENV`, or it cannot be reached: the caller starts a fresh process)."""
    path = env.get(ZYGOTE_ENV)
    if not path:
        return None
    try:
        return ForkedWorker(path, env)
    except (OSError, ValueError):
        return None
