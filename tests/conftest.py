"""Shared fixtures, and only fixtures (helpers live in tests/support). Every AWS test gets a
fresh moto mock and fresh clients (created after it)."""
from __future__ import annotations

import contextlib
import os
import pathlib
import dataclasses
import time
from typing import Any, Callable

import pytest

from tests.support import world       # first: sets the test environment and speed patches
from tests.support.clock import Clock
from tests.support.world import ACCOUNT, REGION, ROOT
from tests.support.drive import make_kit


@pytest.fixture
def settings():
    from chalicelib.config import get_settings
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def moto_env(settings):
    """A fresh in-process AWS with the records table created."""
    from moto import mock_aws

    from chalicelib import aws
    from tests.support.pod_identity import distinct_issuers
    with mock_aws(), distinct_issuers():
        aws.reset()
        aws.Store(settings).create_table()
        _pods(ACCOUNT, REGION)          # moto has no Pod Identity API: the strict-AWS fake
        yield settings
        aws.reset()


@pytest.fixture
def kit_factory(moto_env) -> Callable[..., Any]:
    """``kit_factory(clock=..., **settings)``: a Kit on this test's world with those settings
    changed (tests/reliability overrides it with the scenario's settings and clock)."""
    def make(clock: Callable[[], float] = time.time, **overrides: Any) -> Any:
        return make_kit(dataclasses.replace(moto_env, **overrides), clock=clock)
    return make


def _pods(account: str, region: str):
    from tests.support.pod_identity import PodIdentity
    return PodIdentity(account, region)


@pytest.fixture
def pod_identity(moto_env):
    """The Pod Identity fake of this test's world (add associations with ``associate``)."""
    from tests.support import pod_identity as fake
    return fake.current()


@pytest.fixture
def engine(kit_factory):
    return kit_factory()


@pytest.fixture
def cluster(moto_env):
    """An EKS cluster 'payments-prod' and its Karpenter controller role."""
    world.make_cluster(world.CLUSTER)
    world.make_role(world.ROLE)
    return world.CLUSTER


@pytest.fixture
def api_with(kit_factory):
    """``api_with(**settings)``: the Chalice app under chalice.test.Client, on a fresh kit with
    those settings changed, for this test's world. The app's kit is dropped afterwards."""
    import app as service_app
    from chalice.test import Client
    with contextlib.ExitStack() as stack:
        def serve(**overrides: Any) -> Client:
            service_app._kit = kit_factory(**overrides)
            return stack.enter_context(Client(service_app.app, stage_name="local"))
        try:
            yield serve
        finally:
            service_app._kit = None


@pytest.fixture
def api(api_with):
    """The Chalice app under chalice.test.Client, with the default settings."""
    return api_with()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def built_package(tmp_path_factory) -> pathlib.Path:
    """`make package STAGE=prod` as on a fresh clone: no KIP_* or POWERTOOLS_* variable (the
    ones this file sets for the other tests are removed). Built once per session; the tests that
    use it carry ``xdist_group("package")`` so that, with ``--dist loadgroup`` (the Makefile),
    they share one worker and one build."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("package") / "out"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KIP_", "POWERTOOLS_", "AWS_ENDPOINT"))}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--build", "--stage",
                    "prod", str(out)], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=900)
    return out
