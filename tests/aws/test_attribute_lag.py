"""SQS shows an attribute change up to 60 s later (15 min for retention). moto shows it at once,
so a botocore after-call hook makes GetQueueAttributes answer the old values for a while, as
AWS does. A reconcile right after an update must neither write the values again nor report the
lag as drift."""
from __future__ import annotations

import pytest

from chalicelib import aws
from chalicelib.core.spec import ClusterRequest
from tests.support import drive


class Lag:
    """GetQueueAttributes shows ``old`` values until switched off."""

    def __init__(self, old: dict) -> None:
        self.old, self.on = old, True
        aws.add_hook("after-call.sqs.GetQueueAttributes", self)

    def __call__(self, parsed, **_):
        if self.on and "Attributes" in parsed:
            parsed["Attributes"].update(self.old)


@pytest.fixture
def eng(kit_factory, cluster, clock):
    from tests.support.world import moto_like_aws
    with moto_like_aws():       # moto's SetQueueAttributes would clear the policy; AWS does not
        yield kit_factory(clock)


def writes(fn) -> list:
    seen: list = []
    aws.add_hook("before-call.*.*", lambda model, **_: seen.append(model.name)
                 if aws.is_write(model.name) and model.name not in ("PutItem", "UpdateItem")
                 else None)
    fn()
    return seen


def test_a_reconcile_right_after_an_update_neither_rewrites_nor_reports_drift(eng, cluster,
                                                                                clock):
    drive.provision(eng, ClusterRequest(cluster_name=cluster, visibility_timeout_seconds=300))
    out = drive.provision(eng, ClusterRequest(cluster_name=cluster, visibility_timeout_seconds=120,
                                       message_retention_seconds=3600))
    assert [a["op"] for a in out.actions] == ["set_queue_attributes"]
    lag = Lag({"VisibilityTimeout": "300", "MessageRetentionPeriod": "1209600"})
    # within the minute: the old values show, and that is not drift
    report = drive.reconcile(eng, drive.identity(eng, cluster), dry_run=True)
    assert report.actions == []
    assert writes(lambda: drive.reconcile(eng, drive.identity(eng, cluster))) == []
    # retention may lag 15 minutes: still not drift after 2
    clock.now += 120
    lag.old = {"MessageRetentionPeriod": "1209600"}
    assert drive.reconcile(eng, drive.identity(eng, cluster), dry_run=True).actions == []
    # but an old value past its window is drift again (someone changed it back)
    clock.now += 15 * 60
    assert [a["op"] for a in drive.reconcile(eng, drive.identity(eng, cluster), dry_run=True).actions] == [
        "set_queue_attributes"]
    lag.on = False
    assert drive.reconcile(eng, drive.identity(eng, cluster), dry_run=True).actions == []
