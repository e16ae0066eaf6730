"""Pure: whether a customer KMS key can encrypt the interruption queue."""
from __future__ import annotations

from typing import Optional

from chalicelib.errors import ValidationError
from chalicelib.state import KeyState


def usable_key_arn(key_id: str, key: Optional[KeyState], account: str, region: str) -> str:
    """The key's ARN; refuses keys EventBridge cannot use."""
    if key is None:
        raise ValidationError(f"kms_key_id: key {key_id!r} was not found in account {account} "
                              f"region {region}", field="kms_key_id",
                              allowed="an existing customer-managed KMS key")
    if key.manager == "AWS":
        raise ValidationError("kms_key_id: AWS-managed keys cannot be used: EventBridge cannot "
                              "encrypt with them", field="kms_key_id",
                              allowed="a customer-managed KMS key")
    return key.arn
