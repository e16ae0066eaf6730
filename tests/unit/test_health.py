"""chalicelib.core.health: the consumer state from queue counts and CloudWatch series (pure)."""
from __future__ import annotations

import pytest

from chalicelib.core import health

NOW = 1_800_000_000.0


def series(age=(), deleted=()):
    return {health.AGE: list(age), health.DELETED: list(deleted)}


@pytest.mark.parametrize("queue, data, expected", [
    ({"ApproximateNumberOfMessages": "3"}, series(age=[(NOW - 60, 601)]), "stale"),
    ({"ApproximateNumberOfMessages": "3"}, series(age=[(NOW - 60, 600)]), "idle"),
    ({"ApproximateNumberOfMessages": "0"}, series(deleted=[(NOW - 1800, 2)]), "active"),
    ({"ApproximateNumberOfMessagesNotVisible": "1"}, series(), "active"),
    ({"ApproximateNumberOfMessages": "0"}, series(), "idle"),
    ({"ApproximateNumberOfMessages": "5"}, None, "unknown"),
    # stale wins over recent deletes: someone reads, but not this backlog's oldest message
    ({"ApproximateNumberOfMessages": "5"}, series(age=[(NOW, 4000)], deleted=[(NOW, 1)]),
     "stale"),
])
def test_consumer_states(queue, data, expected):
    assert health.assess(queue, {}, data, NOW, 600)["consumer"] == expected


def test_only_the_last_fifteen_minutes_of_age_count():
    old = series(age=[(NOW - 3600, 9000), (NOW - 1500, 9000)])
    assert health.oldest_age(old, NOW) is None
    assert health.oldest_age(series(age=[(NOW - 600, 700), (NOW - 60, 650)]), NOW) == 700


def test_changes_report_turning_stale_and_the_dlq_filling_once():
    idle = {"consumer": "idle", "dlq_depth": 0}
    stale = {"consumer": "stale", "dlq_depth": 2}
    assert health.changes(idle, stale) == ["consumer_stale", "dlq_filled"]
    assert health.changes(stale, {"consumer": "stale", "dlq_depth": 5}) == []
    assert health.changes(None, {"consumer": "idle", "dlq_depth": None}) == []


def test_only_state_changes_are_worth_a_write():
    base = {"consumer": "idle", "dlq_depth": 0, "backlog": 0}
    assert health.worth_recording(None, base)
    assert not health.worth_recording(base, {**base, "backlog": 7})
    assert health.worth_recording(base, {**base, "dlq_depth": 1})
    assert health.worth_recording(base, {**base, "consumer": "unknown"})


def test_one_get_metric_data_call_asks_for_both_metrics_of_the_queue():
    queries = health.metric_queries("kip-x")
    assert [(q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"]) for q in queries] \
        == [("ApproximateAgeOfOldestMessage", "Maximum"), ("NumberOfMessagesDeleted", "Sum")]
    assert all(q["MetricStat"]["Metric"]["Dimensions"] == [{"Name": "QueueName",
                                                           "Value": "kip-x"}] for q in queries)
