"""`make local`: moto server + `chalice local` on 127.0.0.1 until Ctrl-C, SIGTERM or SIGHUP.

* SIGINT, SIGTERM and SIGHUP (Ctrl-C, `timeout`, systemd, CI, a closed terminal) stop both servers
  and then this process; nothing is left running. Each server runs in its own process group and,
  on Linux, dies with this process even if it is SIGKILLed.
* If `chalice local` dies, it is restarted against the same moto, so the local AWS state (records
  table, queues, rules, policies) survives; after --max-restarts restarts the stack gives up.
* If moto dies, its in-memory state is gone: both servers are stopped and this exits non-zero.
"""
from __future__ import annotations

import argparse
import pathlib
import signal
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from scripts.localstack import Stack  # noqa: E402

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Shutdown(BaseException):
    """A stop signal arrived (BaseException, so no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, frame: Any) -> None:
    for sig in STOP_SIGNALS:          # one shutdown: further signals must not interrupt it
        signal.signal(sig, signal.SIG_IGN)
    raise Shutdown(signum)


def supervise(stack: Stack, max_restarts: int, poll: float = 0.5) -> int:
    restarts = 0
    while True:
        if stack.moto_proc is None or stack.moto_proc.poll() is not None:
            print("moto stopped: its in-memory AWS state is gone; shutting down", file=sys.stderr)
            return 1
        if stack.api_proc is not None and stack.api_proc.poll() is not None:
            code = stack.api_proc.returncode
            if restarts >= max_restarts:
                print(f"chalice local exited ({code}) after {restarts} restarts; shutting down",
                      file=sys.stderr)
                return 1
            restarts += 1
            print(f"chalice local exited ({code}); restarting ({restarts}/{max_restarts}), "
                  f"moto and its state stay", file=sys.stderr, flush=True)
            stack.restart_api()
            print(f"API          {stack.api_url} (restarted)", flush=True)
        time.sleep(poll)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moto-port", type=int, default=5000)
    ap.add_argument("--api-port", type=int, default=8000)
    ap.add_argument("--max-restarts", type=int, default=5,
                    help="restarts of a crashed `chalice local` before giving up")
    args = ap.parse_args()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    stack = Stack(args.moto_port, args.api_port, quiet=False)
    try:
        with stack:
            print(f"\nmoto (AWS)   {stack.moto_url}\nAPI          {stack.api_url}\n"
                  f"table        kip-clusters-local\n\nTry:\n"
                  f"  export AWS_ENDPOINT_URL={stack.moto_url} AWS_ACCESS_KEY_ID=testing "
                  f"AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=eu-west-1\n"
                  f"  curl -s {stack.api_url}/clusters\n\nCtrl-C stops both.", flush=True)
            return supervise(stack, args.max_restarts)
    except Shutdown as stop:
        print(f"\n{signal.Signals(stop.signum).name}: stopped moto and chalice local",
              file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
