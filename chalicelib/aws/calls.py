"""One AWS call -> its answer, or a domain error chosen by the error *code*.

"Already gone" on a read or delete is an answer (``None``), not an error.
"""
from __future__ import annotations

from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError as BotoConnectionError
from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

from chalicelib import errors

THROTTLE_CODES = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestThrottled",
    "RequestThrottledException", "SlowDown",
    "AWS.SimpleQueueService.RequestThrottled", "TransactionInProgressException",
}
GONE_CODES = {
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NoSuchEntity",
    "ResourceNotFoundException", "NotFoundException",
}
# A quota error is not throttling, although botocore's retry modes treat LimitExceededException
# as such (which would spend every retry, ~70 s, on a full quota): it is final at once.
QUOTA_CODES = {"LimitExceededException", "LimitExceeded", "ServiceQuotaExceededException"}
# (service, operation) -> (the quota, its Service Quotas code or None when not adjustable)
QUOTAS = {
    ("events", "PutRule"): ("EventBridge rules per event bus in this region (default 300; 100 "
                            "in af-south-1 and eu-south-1)", "events", "L-244521F2"),
    ("events", "PutTargets"): ("targets per EventBridge rule (5, not adjustable)", None, None),
    ("iam", "AttachRolePolicy"): ("managed policies attached per IAM role (default 10)", "iam",
                                  "L-0DA4ABF3"),
    ("iam", "CreatePolicy"): ("customer managed policies per account (default 1500)", "iam",
                              "L-E95E4862"),
    ("iam", "CreatePolicyVersion"): ("versions per managed policy (5, not adjustable)", None,
                                     None),
}
WRITE_PREFIXES = ("Create", "Put", "Set", "Tag", "Untag", "Delete", "Remove", "Attach", "Detach",
                  "Update", "Add")


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "Unknown")
    return type(exc).__name__


def quota_error(service: str, operation: str, code: str, message: str,
                step: str) -> errors.QuotaExceeded:
    what, quota_service, quota_code = QUOTAS.get((service, operation),
                                                 (f"a quota of {service}", None, None))
    how = (f"raise it in Service Quotas (aws service-quotas request-service-quota-increase "
           f"--service-code {quota_service} --quota-code {quota_code} --desired-value N) or "
           "delete unused resources" if quota_code else "delete unused resources")
    return errors.QuotaExceeded(
        f"{step}: the AWS quota on {what} is full ({code}: {message}); {how}, then retry",
        quota=what, quota_code=quota_code, step=step, aws_code=code)


def stop_on_quota(response: Any = None, operation: Any = None, **_: Any) -> None:
    """botocore ``needs-retry`` hook: a quota error ends the call at once, without retries."""
    if not response or operation is None:
        return None
    err = (response[1] or {}).get("Error", {}) if isinstance(response[1], dict) else {}
    if err.get("Code") in QUOTA_CODES:
        service = operation.service_model.endpoint_prefix
        raise quota_error(service, operation.name, err["Code"], err.get("Message", ""),
                          f"{service}:{operation.name}")
    return None


def translate(exc: BaseException, step: str) -> errors.KipError:
    """A botocore failure -> a domain error that says which call failed and why."""
    code = error_code(exc)
    if isinstance(exc, ClientError):
        msg = exc.response.get("Error", {}).get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in QUOTA_CODES:
            op = exc.operation_name or ""
            return quota_error(step.split(":")[0], op, code, msg, step)
        if code in THROTTLE_CODES:
            return errors.Throttled(f"AWS kept throttling {step} after the retries; try again",
                                    retry_after=5, step=step, aws_code=code)
        if code == "AWS.SimpleQueueService.QueueDeletedRecently":
            return errors.Throttled(f"{step}: SQS needs 60 seconds after deleting a queue before "
                                    "one of the same name can be created; try again in a minute",
                                    retry_after=60, step=step, aws_code=code)
        if status >= 500:
            return errors.Throttled(f"AWS answered {step} with a server error ({code}) after the "
                                    "retries; try again", retry_after=5, step=step, aws_code=code)
        return errors.AwsCallFailed(f"{step} failed: {code}: {msg}", step=step, aws_code=code)
    if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError, BotoConnectionError)):
        return errors.Throttled(f"{step} timed out or could not connect after the retries",
                                retry_after=5, step=step, aws_code=code)
    return errors.AwsCallFailed(f"{step} failed: {code}: {exc}", step=step, aws_code=code)


def call(step: str, fn: Callable[..., Any], *args: Any, gone_ok: bool = False,
         **kw: Any) -> Any:
    """``fn(*args, **kw)``; ``None`` for "already gone" when ``gone_ok``; else a domain error."""
    try:
        return fn(*args, **kw)
    except ClientError as exc:
        if gone_ok and error_code(exc) in GONE_CODES:
            return None
        raise translate(exc, step) from exc
    except BotoCoreError as exc:
        raise translate(exc, step) from exc


def is_write(operation_name: str) -> bool:
    return operation_name.startswith(WRITE_PREFIXES)


def tags_list(tags: dict) -> list[dict]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def tags_dict(tags: list | None) -> dict:
    return {t["Key"]: t["Value"] for t in tags or []}
