"""The package rehearsal's fixtures: the packaged template as CloudFormation receives it (the SAM
transform run by aws-sam-translator), the moto-only adjustments, and a moto server.

Every moto-only adjustment is here, small, and says what AWS does instead."""
from __future__ import annotations

import copy
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from scripts import deploy

from tests.support.package import (CODE_BUCKET, REGION, ROOT, STACK, for_moto,  # noqa: F401
                                   free_port, translate)


@pytest.fixture(scope="session")
def deploy_template(built_package) -> dict:
    """sam.json as scripts/deploy.py sends it: CodeUri rewritten to the uploaded zip."""
    key = deploy.code_key(built_package / "deployment.zip", "kip/prod")
    template, _ = deploy.rewrite_code_uris(json.loads((built_package / "sam.json").read_text()),
                                           CODE_BUCKET, key)
    return {"template": template, "key": key}


@pytest.fixture(scope="session")
def translated(deploy_template) -> dict:
    return translate(deploy_template["template"])


@pytest.fixture(scope="session")
def moto_server():
    """scripts/moto_server.py on a free loopback port, in its own process (the in-process mocks
    of other tests reset moto's state; this one must keep the deployed stack); stopped after."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "moto_server.py"), "--port",
                             str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("moto server exited")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
