"""Organizations: which organization an account belongs to (KIP_ORG_ID without an account list).

``organizations:DescribeAccount`` answers only in the organization's management account or a
delegated administrator account (or one a resource-based delegation policy allows), with kip's own
credentials: the hub must run there. The account's ARN names its organization
(``arn:aws:organizations::<management>:account/o-<id>/<account>``). Answers are cached for the
life of the process (``TTL`` seconds), so a trigger storm costs one call per account.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from chalicelib import errors
from chalicelib.aws.calls import call
from chalicelib.aws.clients import client
from chalicelib.config import Settings

TTL = 900.0
NOT_MEMBER = {"AccountNotFoundException"}
NO_ANSWER = {"AccessDeniedException", "AccessDenied", "AWSOrganizationsNotInUseException"}


class Organization:
    """The caller's organization, as seen from kip's own account; one instance per engine."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.clock = settings, clock
        self._cache: dict[str, tuple[Optional[str], float]] = {}
        self._lock = threading.Lock()

    def organization_of(self, account: str) -> Optional[str]:
        """The organization id ``account`` belongs to, or None if not in the caller's one.
        Refusals to answer (kip not in the management or a delegated administrator account) are
        403s that say so: membership is never assumed."""
        with self._lock:
            hit = self._cache.get(account)
            if hit is not None and self.clock() < hit[1]:
                return hit[0]
        org = self._describe(account)
        with self._lock:
            self._cache[account] = (org, self.clock() + TTL)
        return org

    def _describe(self, account: str) -> Optional[str]:
        step = f"organizations:DescribeAccount {account}"
        orgs = client("organizations", None, self.settings.region, self.settings)
        try:
            r = call(step, orgs.describe_account, AccountId=account)
        except errors.AwsCallFailed as exc:
            code = exc.extra.get("aws_code") or ""
            if code in NOT_MEMBER:
                return None
            if code in NO_ANSWER:
                raise errors.Forbidden(
                    f"account_id: kip cannot verify that account {account} belongs to "
                    f"organization {self.settings.org_id} ({step} failed: {code}); run kip in "
                    "the management or a delegated administrator account, or list the account "
                    "in KIP_ALLOWED_ACCOUNTS", field="account_id", account_id=account,
                    aws_code=code) from exc
            raise
        arn = r.get("Account", {}).get("Arn", "")
        parts = arn.split(":account/", 1)[-1].split("/")
        return parts[0] if len(parts) == 2 and parts[0].startswith("o-") else None
