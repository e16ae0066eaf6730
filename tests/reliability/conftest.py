"""Fixtures of the reliability suite: a fresh moto world with a fault tap, fast botocore backoff,
the live local stack (moto server + chalice local on loopback), the matrix parametrization, and an
optional JSON-lines log of every outcome that scripts/reliability_report.py turns into
docs/RELIABILITY.md."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from tests.support.drive import make_kit
from tests.support.scenario import (BACKOFF_LOG, TRANSIENT, enumerate_calls, matrix_cases,
                                    world)

RESULTS_ENV = "KIP_RELIABILITY_RESULTS"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: the fault matrix, races, hostile input and "
                                       "least-privilege suite (tests/reliability)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Everything here is `reliability`; what starts the local stack is also `e2e`."""
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)
            if "stack" in getattr(item, "fixturenames", ()) or item.name.startswith(
                    ("test_20_concurrent", "test_one_update")):
                item.add_marker(pytest.mark.e2e)
BACKOFF_SCALE = 0.001   # botocore's computed delay, in milliseconds instead of seconds


# ----------------------------------------------------------------------------- matrix
def _ids(case: tuple) -> str:
    phase, label, kind = case
    return f"{phase}-{kind}-{label}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every AWS call of a clean provision / reconcile / teardown, times each fault class."""
    wanted = {
        "transient_case": TRANSIENT,
        "hard_case": ("hard",),
        "crash_case": ("crash",),
        "lost_case": ("lost_response",),
    }
    for fixture, kinds in wanted.items():
        if fixture in metafunc.fixturenames:
            cases = matrix_cases(kinds)
            metafunc.parametrize(fixture, cases, ids=[_ids(c) for c in cases])


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch, record_property):
    """Keep botocore's own retry logic, but sleep a thousandth of the delay it computes.

    This patches the library (botocore.retries.standard.ExponentialBackoff), never our code; the
    delays botocore would have slept are kept in BACKOFF_LOG for the report."""
    from botocore.retries import standard
    original = standard.ExponentialBackoff.delay_amount

    def delay_amount(self, context):  # type: ignore[no-untyped-def]
        delay = original(self, context)
        BACKOFF_LOG.append(delay)
        return delay * BACKOFF_SCALE
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", delay_amount)
    start = len(BACKOFF_LOG)
    yield
    computed = BACKOFF_LOG[start:]
    if computed:
        record_property("backoff", {"retries": len(computed), "seconds": round(sum(computed), 3)})


@pytest.fixture
def sc():
    """A fresh moto world (records table, tap installed) for the cluster payments-prod."""
    from chalicelib.config import get_settings
    enumerate_calls()     # the clean reference runs in worlds of its own: do it first
    get_settings.cache_clear()
    with world() as scenario:
        yield scenario
    get_settings.cache_clear()


@pytest.fixture
def kit_factory(sc):
    """Kits on the scenario's world: its settings (changed as asked), its clock, its tap; the root
    fixtures ``engine``, ``api`` and ``api_with`` use this one here."""
    def make(clock=None, **overrides):
        if clock is None and not overrides:
            return sc.engine()
        settings = dataclasses.replace(sc.settings, **overrides)
        kit = make_kit(settings, clock=clock or sc.clock)
        sc._engines.append(kit)          # shut down with the world
        return kit
    return make


@pytest.fixture(scope="session")
def stack():
    """moto server + chalice local on free 127.0.0.1 ports, for the races and the fuzzer."""
    from scripts.localstack import Stack
    with Stack() as s:
        yield s


# ----------------------------------------------------------------------------- results log
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With KIP_RELIABILITY_RESULTS=path, append one JSON line per test outcome (controller only
    when running under xdist, so each test is written once)."""
    path = os.environ.get(RESULTS_ENV)
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    props = {k: v for k, v in report.user_properties}
    if report.when == "teardown" and "backoff" in props and not report.failed:
        props = {"backoff": props["backoff"]}       # recorded by fast_backoff after the call
    elif report.when != "call" and not (report.failed or report.skipped):
        return
    line = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
            "duration": round(report.duration, 3), "props": props}
    if report.failed:
        text = str(report.longrepr)
        line["error"] = _short(text)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, default=str) + "\n")


def _short(longrepr: str) -> str:
    """The assertion line of a failure, not the whole traceback."""
    lines = [ln for ln in longrepr.splitlines() if ln.startswith("E ")]
    return " ".join(ln[1:].strip() for ln in lines)[:600] or longrepr[-600:]
