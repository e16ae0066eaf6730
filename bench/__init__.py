"""`make bench`: the provisioner against moto server with a fixed per-call latency (see run.py)."""
