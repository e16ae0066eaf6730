"""`make local`: moto server + `chalice local` on 127.0.0.1 until Ctrl-C."""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from scripts.localstack import Stack  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--moto-port", type=int, default=5000)
    ap.add_argument("--api-port", type=int, default=8000)
    args = ap.parse_args()
    stack = Stack(args.moto_port, args.api_port, quiet=False)
    with stack:
        print(f"\nmoto (AWS)   {stack.moto_url}\nAPI          {stack.api_url}\n"
              f"table        kip-clusters-local\n\nTry:\n"
              f"  export AWS_ENDPOINT_URL={stack.moto_url} AWS_ACCESS_KEY_ID=testing "
              f"AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=eu-west-1\n"
              f"  curl -s {stack.api_url}/clusters\n\nCtrl-C stops both.", flush=True)
        try:
            while all(p.poll() is None for p in stack.procs):
                time.sleep(0.5)
            print("a server stopped; shutting down", file=sys.stderr)
        except KeyboardInterrupt:
            print("\nstopping")


if __name__ == "__main__":
    main()
