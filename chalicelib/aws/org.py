"""Organizations: which organization an account belongs to (KIP_ORG_ID without an account list),
and which accounts it has (the schedule's adoption discovers them with ``ListAccounts``).

``organizations:DescribeAccount`` answers only in the organization's management account or a
delegated administrator account (or one a resource-based delegation policy allows), with kip's own
credentials: the hub must run there. The account's ARN names its organization
(``arn:aws:organizations::<management>:account/o-<id>/<account>``). Answers are cached for the
life of the process (``TTL`` seconds), so a trigger storm costs one call per account.

``ListAccounts`` (same accounts only; no resource-level permissions, ``Resource: *``) pages 20
accounts at a time. An account's life-cycle field is ``State`` (PENDING_ACTIVATION, ACTIVE,
SUSPENDED, PENDING_CLOSURE, CLOSED); ``Status`` was retired on 2026-09-09 but moto still sends
only it, so ``State`` is read first. Only ACTIVE accounts are discovered; the listing also fills
the membership cache, sparing a ``DescribeAccount`` per account.
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

    def member_accounts(self) -> list[str]:
        """The organization's ACTIVE accounts (kip's own organization, through its own
        credentials: the management or a delegated administrator account). A refusal is a 403
        that says where kip must run, as for ``organization_of``."""
        step = "organizations:ListAccounts"
        orgs = client("organizations", None, self.settings.region, self.settings)
        accounts, kw = [], {}
        while True:
            try:
                r = call(step, orgs.list_accounts, **kw)
            except errors.AwsCallFailed as exc:
                code = exc.extra.get("aws_code") or ""
                if code in NO_ANSWER:
                    raise errors.Forbidden(
                        f"kip cannot list the accounts of organization {self.settings.org_id} "
                        f"({step} failed: {code}); run kip in the management or a delegated "
                        "administrator account, or list the accounts in KIP_ALLOWED_ACCOUNTS",
                        aws_code=code) from exc
                raise
            accounts += r.get("Accounts") or []
            if not r.get("NextToken"):
                break
            kw = {"NextToken": r["NextToken"]}
        active = [a for a in accounts if (a.get("State") or a.get("Status")) == "ACTIVE"]
        expires = self.clock() + TTL
        with self._lock:
            for a in active:
                self._cache[a["Id"]] = (_org_in(a.get("Arn", "")), expires)
        return sorted(a["Id"] for a in active)

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
        return _org_in(r.get("Account", {}).get("Arn", ""))


def _org_in(arn: str) -> Optional[str]:
    """``arn:aws:organizations::<management>:account/o-<id>/<account>`` -> ``o-<id>``."""
    parts = arn.split(":account/", 1)[-1].split("/")
    return parts[0] if len(parts) == 2 and parts[0].startswith("o-") else None
