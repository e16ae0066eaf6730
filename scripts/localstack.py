"""The embedded local stack: moto in server mode and `chalice local`, both on 127.0.0.1.

Used by `make local`, `make demo`, the end-to-end tests and the benchmark. Only loopback
addresses; every process started here is stopped by ``Stack.stop()``: each child runs in its own
process group (the whole group is signalled) and, on Linux, is also told by the kernel to exit if
the process that started it dies first (PR_SET_PDEATHSIG), so nothing is ever orphaned.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
LOCAL_TABLE = "kip-clusters-local"
LOCAL_SWEEP_QUEUE = "kip_sweep-local"
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-west-1",
}


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Can a server listen on 127.0.0.1:``port``? With SO_REUSEADDR, as the servers themselves
    bind: connections of a just-stopped server lingering in TIME_WAIT do not count as "in use"."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


_LIBC = None
if sys.platform == "linux":
    with contextlib.suppress(OSError):
        _LIBC = ctypes.CDLL(None, use_errno=True)        # loaded here, never after fork


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this child when the thread that started it ends (even by SIGKILL)."""
    _LIBC.prctl(1, signal.SIGTERM, 0, 0, 0)              # PR_SET_PDEATHSIG = 1


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before serving {url}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return          # it answers: good enough
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered at {url} within {timeout:.0f}s")


class Stack:
    def __init__(self, moto_port: Optional[int] = None, api_port: Optional[int] = None,
                 latency_ms: int = 0, quiet: bool = True, with_api: bool = True) -> None:
        self.moto_port = moto_port or free_port()
        self.api_port = api_port or free_port()
        self.latency_ms = latency_ms
        self.quiet, self.with_api = quiet, with_api
        self.procs: list[subprocess.Popen] = []
        self.moto_proc: Optional[subprocess.Popen] = None
        self.api_proc: Optional[subprocess.Popen] = None

    @property
    def moto_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict:
        """The environment a client of this stack needs (boto3 reads AWS_ENDPOINT_URL)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KIP_"))}
        env.update(FAKE_ENV)
        env.update(AWS_ENDPOINT_URL=self.moto_url, KIP_TABLE_NAME=LOCAL_TABLE,
                   KIP_API_AUTH="none", POWERTOOLS_TRACE_DISABLED="true",
                   POWERTOOLS_METRICS_DISABLED="true", PYTHONUNBUFFERED="1")
        return env

    def _spawn(self, args: list[str], env: dict) -> subprocess.Popen:
        out = subprocess.DEVNULL if self.quiet else None
        # the kernel ties the child's life to the *thread* that forks it: main thread only
        tie = _LIBC is not None and threading.current_thread() is threading.main_thread()
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=out,
                                start_new_session=True,
                                preexec_fn=_die_with_parent if tie else None)
        self.procs.append(proc)
        return proc

    def start(self) -> "Stack":
        for port in (self.moto_port, self.api_port if self.with_api else None):
            if port and not port_free(port):
                raise RuntimeError(f"port {port} on 127.0.0.1 is in use; set MOTO_PORT/API_PORT")
        env = self.env()
        moto_args = [str(BIN / "python"), str(ROOT / "scripts" / "moto_server.py"),
                     "--port", str(self.moto_port), "--latency-ms", str(self.latency_ms)]
        self.moto_proc = self._spawn(moto_args, env)
        _wait_http(self.moto_url + "/moto-api/", self.moto_proc)
        self.create_table()
        if self.with_api:
            self.start_api()
        return self

    def start_api(self) -> subprocess.Popen:
        """Start `chalice local` against the running moto (again, after a crash)."""
        self.api_proc = self._spawn([str(BIN / "chalice"), "local", "--host", "127.0.0.1",
                                     "--port", str(self.api_port), "--stage", "local",
                                     "--no-autoreload"], self.env())
        _wait_http(self.api_url + "/openapi.json", self.api_proc)
        return self.api_proc

    def restart_api(self, timeout: float = 30.0) -> subprocess.Popen:
        """Stop what is left of `chalice local` and start it again; moto and its state stay."""
        if self.api_proc is not None:
            self._stop_one(self.api_proc)
            self.procs = [p for p in self.procs if p is not self.api_proc]
        deadline = time.monotonic() + timeout
        while not port_free(self.api_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.api_port} on 127.0.0.1 stays in use")
            time.sleep(0.2)
        return self.start_api()

    def create_table(self) -> None:
        with self.environ():
            from chalicelib import aws
            from chalicelib.config import Settings
            aws.reset()
            aws.Store(Settings.from_env()).create_table()
            # the fan-out sweep's work queue; chalice local runs no SQS handlers, so the local
            # stage sweeps inline (KIP_SWEEP_MODE=inline) and tests invoke sweep_worker directly
            from chalicelib.aws import worklist
            worklist.create_work_queue(Settings.from_env(), LOCAL_SWEEP_QUEUE)
            aws.reset()

    @contextlib.contextmanager
    def environ(self):
        """Point this process's boto3 at the stack while the block runs."""
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env())
        try:
            from chalicelib.config import get_settings
            get_settings.cache_clear()
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            from chalicelib.config import get_settings
            get_settings.cache_clear()

    @staticmethod
    def _stop_one(proc: subprocess.Popen) -> None:
        """SIGTERM the child's whole process group, SIGKILL it after 10 s; always reap it."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                pass
        # the leader is gone or hangs: SIGKILL what is left of its group (its pid is still the
        # group id while any member lives, so this names no one else's processes)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            self._stop_one(proc)
        self.procs.clear()
        self.moto_proc = self.api_proc = None

    def __enter__(self) -> "Stack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
