"""Pure: room for one more EventBridge rule on an account-region's default bus.

EventBridge allows 300 rules per event bus per region by default (100 in af-south-1 and
eu-south-1), shared with everything else in the account. kip keeps ``KIP_RULE_RESERVE`` of them
free for the account's other users and refuses, before anything is created, when a new cluster's
rule would eat into that reserve.
"""
from __future__ import annotations

from typing import Optional

from chalicelib.errors import QuotaExceeded

RULE_QUOTA_CODE = "L-244521F2"
SMALL_QUOTA_REGIONS = {"af-south-1": 100, "eu-south-1": 100}


class RuleQuotaExceeded(QuotaExceeded):
    code = "RuleQuotaExceeded"


def default_rule_quota(region: str) -> int:
    return SMALL_QUOTA_REGIONS.get(region, 300)


def effective_quota(region: str, from_service_quotas: Optional[float],
                    configured: Optional[int]) -> tuple[int, str]:
    """The quota and where it came from: Service Quotas, else KIP_RULE_QUOTA, else the default."""
    if from_service_quotas is not None:
        return int(from_service_quotas), "Service Quotas"
    if configured is not None:
        return configured, "KIP_RULE_QUOTA"
    return default_rule_quota(region), "the default for the region"


def check_rule_room(used: int, quota: int, source: str, reserve: int, account: str,
                    region: str) -> None:
    """Refuse when creating one more rule would leave fewer than ``reserve`` free."""
    if used + 1 + reserve <= quota:
        return
    raise RuleQuotaExceeded(
        f"EventBridge rules on the default bus of account {account} in {region}: {used} of "
        f"{quota} in use ({source}); kip keeps {reserve} free (KIP_RULE_RESERVE), so it will not "
        "create another. Raise the quota 'Maximum number of rules per event bus' "
        f"(aws service-quotas request-service-quota-increase --service-code events "
        f"--quota-code {RULE_QUOTA_CODE} --desired-value N --region {region}), delete unused "
        "rules, or lower KIP_RULE_RESERVE; nothing was created.",
        field="cluster_name", quota="rules per event bus", quota_code=RULE_QUOTA_CODE,
        used=used, limit=quota, reserve=reserve)
