"""SSM parameters kip reads at cold start (``KIP_AUTHZ=ssm:<name>``), in its own account."""
from __future__ import annotations

from chalicelib.aws.calls import call
from chalicelib.aws.clients import client
from chalicelib.config import Settings


def read_parameter(name: str, settings: Settings) -> str:
    """One ``ssm:GetParameter`` (decrypted, so a SecureString works too)."""
    r = call(f"ssm:GetParameter {name}",
             client("ssm", None, settings.region, settings).get_parameter,
             Name=name, WithDecryption=True)
    return (r.get("Parameter") or {}).get("Value") or ""
