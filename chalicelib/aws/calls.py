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
WRITE_PREFIXES = ("Create", "Put", "Set", "Tag", "Untag", "Delete", "Remove", "Attach", "Detach",
                  "Update", "Add")


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "Unknown")
    return type(exc).__name__


def translate(exc: BaseException, step: str) -> errors.KipError:
    """A botocore failure -> a domain error that says which call failed and why."""
    code = error_code(exc)
    if isinstance(exc, ClientError):
        msg = exc.response.get("Error", {}).get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
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
