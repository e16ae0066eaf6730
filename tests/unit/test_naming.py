"""naming: every resource name fits AWS limits and charsets, is deterministic and never shared."""
from __future__ import annotations

import re

import pytest

from chalicelib.config import PREFIX_RE
from hypothesis import given, settings, strategies as st

from chalicelib.core import naming
from tests.support.world import ACCOUNT, REGION

PREFIX = "kip-"
IAM_PATH = "/kip/"

SQS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
RULE_NAME = re.compile(r"^[.\-_A-Za-z0-9]{1,64}$")
IAM_POLICY_NAME = re.compile(r"^[\w+=,.@-]{1,128}$")
EKS_NAME = r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$"


def names(cluster: str, prefix: str = PREFIX, region: str = REGION,
          account: str = ACCOUNT) -> naming.Names:
    """Every name, the legacy five-rule layout's included (teardown still looks for those)."""
    return naming.names_for(naming.ClusterId(account, region, cluster), prefix, IAM_PATH,
                            legacy=True)


def assert_within_limits(n: naming.Names) -> None:
    assert SQS_NAME.match(n.queue), n.queue
    assert SQS_NAME.match(n.dlq), n.dlq
    assert len(n.rules) == 5
    assert RULE_NAME.match(n.rule) and n.rule.endswith(naming.RULE_SUFFIX_ONE), n.rule
    for rule in n.rules.values():
        assert RULE_NAME.match(rule), rule
    assert IAM_POLICY_NAME.match(n.policy), n.policy


def all_names(n: naming.Names) -> list[str]:
    return [n.queue, n.dlq, n.rule, *n.rules.values(), n.policy]


@pytest.mark.parametrize("length", [1, 80, 100])
def test_names_fit_limits_for_short_and_long_cluster_names(length):
    # given
    cluster = ("a" + "b1-_" * 30)[:length]
    assert re.match(EKS_NAME, cluster) and len(cluster) == length

    # when
    n = names(cluster)

    # then
    assert_within_limits(n)
    assert n.queue != n.dlq
    assert len(set(n.rules.values())) == 5


def test_short_name_is_kept_verbatim():
    # given / when
    n = names("payments-prod")

    # then
    assert n.queue == "kip-payments-prod"
    assert n.dlq == "kip-_payments-prod-dlq"
    assert n.rule == "kip-payments-prod-events"
    assert naming.names_for(naming.ClusterId(ACCOUNT, REGION, "payments-prod"), PREFIX,
                            IAM_PATH).rules == {}      # new clusters have no legacy rules
    assert n.rules == {
        "spot_interruption": "kip-payments-prod-spot",
        "rebalance_recommendation": "kip-payments-prod-rebalance",
        "instance_state_change": "kip-payments-prod-state",
        "scheduled_change": "kip-payments-prod-health",
        "capacity_reservation_interruption": "kip-payments-prod-capres",
    }
    assert n.policy == "kip-eu-west-1-payments-prod"


def test_arns_are_built_from_the_names():
    # given / when
    n = names("payments-prod")

    # then
    assert n.queue_arn == f"arn:aws:sqs:{REGION}:{ACCOUNT}:kip-payments-prod"
    assert n.dlq_arn == f"arn:aws:sqs:{REGION}:{ACCOUNT}:kip-_payments-prod-dlq"
    assert n.rule_arns["spot_interruption"] == \
        f"arn:aws:events:{REGION}:{ACCOUNT}:rule/kip-payments-prod-spot"
    assert set(n.rule_arns) == set(n.rules)
    assert n.rule_arn == f"arn:aws:events:{REGION}:{ACCOUNT}:rule/kip-payments-prod-events"
    assert n.policy_path == IAM_PATH
    assert n.policy_arn == f"arn:aws:iam::{ACCOUNT}:policy/kip/kip-eu-west-1-payments-prod"


@pytest.mark.parametrize("region, partition", [
    ("eu-west-1", "aws"), ("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov"),
    ("us-iso-east-1", "aws-iso"), ("us-isob-east-1", "aws-iso-b")])
def test_partition_follows_the_region(region, partition):
    # given / when
    n = names("c", region=region)

    # then
    assert naming.partition_for(region) == partition
    assert n.queue_arn.startswith(f"arn:{partition}:sqs:{region}:")
    assert n.policy_arn.startswith(f"arn:{partition}:iam::")


def test_long_names_differing_only_in_the_last_character_never_share_a_name():
    # given
    base = "x" * 99
    a, b = names(base + "a"), names(base + "b")

    # then
    assert a.queue != b.queue
    assert a.dlq != b.dlq
    for kind in a.rules:
        assert a.rules[kind] != b.rules[kind]
    assert a.policy != b.policy
    assert set(all_names(a)).isdisjoint(all_names(b))


def test_truncated_name_keeps_the_suffix_and_a_hash_of_the_whole_name():
    # given
    cluster = "c" * 100

    # when
    n = names(cluster)

    # then
    assert len(n.queue) == naming.SQS_MAX
    assert n.dlq.endswith("-dlq") and len(n.dlq) == naming.SQS_MAX
    assert n.rules["spot_interruption"].endswith("-spot")
    assert naming.short_hash(cluster) in n.queue
    assert n.queue.startswith(PREFIX)


def test_same_cluster_in_two_regions_gets_two_policies():
    # given / when
    eu, us = names("prod", region="eu-west-1"), names("prod", region="us-east-1")

    # then: IAM is global to the account
    assert eu.policy != us.policy


def test_names_are_deterministic_and_round_trip_through_the_record():
    # given
    cluster = "d" * 100

    # when
    first, second = names(cluster), names(cluster)

    # then
    assert first == second
    assert naming.Names.from_dict(first.to_dict()) == first


def test_a_prefix_that_leaves_no_room_is_refused():
    # given / when / then
    with pytest.raises(ValueError):
        naming.fit("p" * 60, "cluster" * 10, "-rebalance", naming.RULE_MAX)


@pytest.mark.parametrize("prefix", ["k", "kip-", "A" * 20])
def test_every_allowed_prefix_keeps_100_char_names_within_limits(prefix):
    # given
    assert PREFIX_RE.fullmatch(prefix)

    # when
    n = names("z" * 100, prefix=prefix)

    # then
    assert_within_limits(n)


def test_ownership_needs_both_tags_and_the_same_cluster():
    # given
    cid = naming.ClusterId(ACCOUNT, REGION, "a")
    other = naming.ClusterId(ACCOUNT, REGION, "b")

    # then
    assert naming.is_owned(naming.ownership_tags(cid), cid)
    assert not naming.is_owned(naming.ownership_tags(other), cid)
    assert not naming.is_owned({naming.CLUSTER_TAG: cid.key}, cid)
    assert not naming.is_owned({}, cid)
    assert not naming.is_owned(None, cid)


cluster_names = st.from_regex(EKS_NAME, fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(cluster_names)
def test_property_every_valid_cluster_name_fits_every_limit(cluster):
    # when
    n = names(cluster)

    # then
    assert_within_limits(n)
    assert len(set(all_names(n))) == 9


@settings(max_examples=60, deadline=None)
@given(st.lists(cluster_names, min_size=2, max_size=40, unique=True))
def test_property_distinct_cluster_names_never_collide(clusters):
    # when
    taken: dict[tuple, str] = {}
    for cluster in clusters:
        n = names(cluster)
        # queues share one namespace, rules another, IAM policies a third
        keyed = [("sqs", n.queue), ("sqs", n.dlq), ("rule", n.rule),
                 *(("rule", r) for r in n.rules.values()), ("iam", n.policy)]
        for key in keyed:
            # then
            assert taken.setdefault(key, cluster) == cluster, (key, cluster, taken[key])


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abcXYZ019_-", min_size=99, max_size=99), st.sampled_from("abc019"),
       st.sampled_from("XYZ_-"))
def test_property_long_names_differing_at_the_end_never_collide(stem, last_a, last_b):
    # given
    a, b = names("a" + stem[:98] + last_a), names("a" + stem[:98] + last_b)

    # then
    assert set(all_names(a)).isdisjoint(all_names(b))


def test_queue_of_one_cluster_is_never_the_dlq_of_another():
    # given
    a, b = names("payments"), names("payments-dlq")

    # then
    assert a.dlq != b.queue
