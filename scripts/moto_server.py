"""moto in server mode on 127.0.0.1, optionally adding a fixed latency to every AWS call.

The latency models AWS control-plane round-trips for the benchmark (`make bench`); it is zero for
the local stack and the tests.
"""
from __future__ import annotations

import argparse
import time

from moto.server import ThreadedMotoServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--latency-ms", type=int, default=0)
    args = ap.parse_args()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    if args.latency_ms:
        _install_latency(args.latency_ms / 1000.0)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _install_latency(delay: float) -> None:
    """Wrap moto's WSGI app so each AWS request (not moto's own /moto-api) waits ``delay``."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original = DomainDispatcherApplication.__call__

    def slow(self, environ, start_response):  # type: ignore[no-untyped-def]
        if not environ.get("PATH_INFO", "").startswith("/moto-api"):
            time.sleep(delay)
        return original(self, environ, start_response)

    DomainDispatcherApplication.__call__ = slow  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
