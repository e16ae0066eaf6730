"""The embedded local stack: moto in server mode and `chalice local`, both on 127.0.0.1.

Used by `make local`, `make demo`, the end-to-end tests and the benchmark. Only loopback
addresses; every process started here is stopped by ``Stack.stop()``.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
LOCAL_TABLE = "kip-clusters-local"
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-west-1",
}


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


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
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=out,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> "Stack":
        for port in (self.moto_port, self.api_port if self.with_api else None):
            if port and not port_free(port):
                raise RuntimeError(f"port {port} on 127.0.0.1 is in use; set MOTO_PORT/API_PORT")
        env = self.env()
        moto_args = [str(BIN / "python"), str(ROOT / "scripts" / "moto_server.py"),
                     "--port", str(self.moto_port), "--latency-ms", str(self.latency_ms)]
        moto = self._spawn(moto_args, env)
        _wait_http(self.moto_url + "/moto-api/", moto)
        self.create_table()
        if self.with_api:
            api = self._spawn([str(BIN / "chalice"), "local", "--host", "127.0.0.1", "--port",
                               str(self.api_port), "--stage", "local", "--no-autoreload"], env)
            _wait_http(self.api_url + "/openapi.json", api)
        return self

    def create_table(self) -> None:
        with self.environ():
            from chalicelib import aws
            from chalicelib.config import Settings
            aws.reset()
            aws.Store(Settings.from_env()).create_table()
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

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        self.procs.clear()

    def __enter__(self) -> "Stack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
