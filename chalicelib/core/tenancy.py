"""Pure: which accounts kip may act in (KIP_ALLOWED_ACCOUNTS, KIP_ORG_ID).

The service's own account is always allowed. With neither setting (the local stage) any account
is; deployed stages refuse to start without one (KIP_REQUIRE_ACCOUNT_LIST, chalicelib/config.py).
An account outside KIP_ALLOWED_ACCOUNTS is allowed only when KIP_ORG_ID is set and Organizations
says the account belongs to that organization: ``organization_of`` (the adapter's cached
organizations:DescribeAccount) answers the account's organization id, or None when it is not in
the caller's organization. It is never consulted for a listed account.
"""
from __future__ import annotations

from typing import Callable, Optional

from chalicelib.config import Settings
from chalicelib.errors import Forbidden

OrgLookup = Callable[[str], Optional[str]]


def decide(account: str, own_account: str, settings: Settings) -> Optional[bool]:
    """True: allowed; False: refused; None: only the organization can tell (KIP_ORG_ID)."""
    if account == own_account or account in settings.allowed_accounts:
        return True
    if not settings.allowed_accounts and not settings.org_id:
        return True
    return None if settings.org_id else False


def require_allowed(account: str, own_account: str, settings: Settings,
                    organization_of: OrgLookup, field: str = "account_id") -> None:
    """403 naming the account and ``field`` unless kip may act in ``account``."""
    verdict = decide(account, own_account, settings)
    if verdict is None:
        org = organization_of(account)
        verdict = org == settings.org_id
        where = (f"it belongs to organization {org}, not {settings.org_id}" if org else
                 f"Organizations does not list it in organization {settings.org_id}")
    else:
        where = "it is not in KIP_ALLOWED_ACCOUNTS"
    if not verdict:
        raise Forbidden(f"{field}: this service may not act in account {account}: {where} "
                        "(the operator adds accounts to KIP_ALLOWED_ACCOUNTS or KIP_ORG_ID)",
                        field=field, allowed=allowed_text(settings), account_id=account)


def allowed_text(settings: Settings) -> str:
    parts = ["this service's own account"]
    if settings.allowed_accounts:
        parts.append("the accounts of KIP_ALLOWED_ACCOUNTS")
    if settings.org_id:
        parts.append(f"member accounts of organization {settings.org_id}")
    if len(parts) == 1:
        return "any 12-digit account id"
    return ", ".join(parts)
