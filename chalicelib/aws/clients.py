"""Sessions and clients: created lazily, once per (account, region, service), shared by threads.

boto3 clients are thread-safe, sessions are not: creation happens under a lock. Retries are
botocore's (``standard`` or ``adaptive``). Another account is reached by assuming
``KIP_CROSS_ACCOUNT_ROLE`` there through STS: one AssumeRole per account at a time, under that
account's own lock and outside the shared one, so a slow STS answer for one account holds up only
the threads that want that account. Hooks (metrics, tests) reach every session and
client, including those made later.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from typing import Any, Callable, Iterator, Optional

import boto3
from botocore.config import Config

from chalicelib.core import actor, naming
from chalicelib import errors
from chalicelib.aws.calls import THROTTLE_CODES, call, stop_on_quota
from chalicelib.config import Settings, get_settings

_lock = threading.RLock()
# A request's time budget (API Gateway cuts every integration at 29 s): a deadline past which no
# new attempt starts, and a cap on attempts per call. Off outside API requests (the trigger and
# the schedule keep botocore's full retries). One request at a time per Lambda process.
_budget: dict[str, Any] = {"deadline": None, "attempts": None}
_state: dict[str, Any] = {"session": None, "clients": {}, "sessions": {}, "account": None,
                          "hooks": [], "building": {}}    # building: session key -> its build lock
RENEW_BEFORE = 300      # seconds before assumed-role credentials expire
MAX_SESSIONS = 32       # assumed-role sessions kept (one per account x actor x path)


def add_hook(event_name: str, handler: Callable[..., Any]) -> None:
    """Register a botocore event hook on every session and client, now and later."""
    with _lock:
        _state["hooks"].append((event_name, handler))
        for sess in _all_sessions():
            sess.events.register(event_name, handler)
        for c in _state["clients"].values():
            c.meta.events.register(event_name, handler)


def reset() -> None:
    """Forget every session, client and hook (a fresh start, e.g. per test)."""
    with _lock:
        _state.update(session=None, clients={}, sessions={}, account=None, hooks=[],
                      building={})


def _all_sessions() -> list:
    out = [s for s, _ in _state["sessions"].values()]
    if _state["session"] is not None:
        out.append(_state["session"])
    return out


@contextlib.contextmanager
def request_budget(seconds: float, max_attempts: int) -> Iterator[None]:
    """Within the block, AWS calls stop retrying after ``max_attempts`` and no attempt starts
    after ``seconds`` (the record's own writes excepted): the request answers 503 in time."""
    _budget.update(deadline=time.monotonic() + seconds, attempts=max_attempts)
    try:
        yield
    finally:
        _budget.update(deadline=None, attempts=None)


def _out_of_time(event_name: str = "", **_: Any) -> None:
    deadline = _budget["deadline"]
    if deadline is not None and time.monotonic() > deadline and ".dynamodb." not in event_name:
        raise errors.Throttled("the request used up its time budget (API Gateway answers no "
                               "later than 29 s); what was done is recorded, retry to finish",
                               retry_after=10, aws_code="RequestBudgetExceeded")


def _out_of_attempts(attempts: int = 0, response: Any = None, caught_exception: Any = None,
                     operation: Any = None, **_: Any) -> None:
    cap = _budget["attempts"]
    if cap is None or attempts < cap:
        return
    err = (response[1] or {}).get("Error", {}) if response and isinstance(response[1], dict) \
        else {}
    status = (response[0].status_code if response and response[0] is not None else 0)
    if caught_exception is not None or err.get("Code") in THROTTLE_CODES or status >= 500:
        name = f"{operation.service_model.endpoint_prefix}:{operation.name}" if operation else ""
        raise errors.Throttled(f"{name} was throttled or unavailable {attempts} times within "
                               "the request's budget; retry later", retry_after=5,
                               aws_code=err.get("Code") or type(caught_exception).__name__)


def _new_session(**kw: Any) -> boto3.session.Session:
    sess = boto3.session.Session(**kw)
    sess.events.register_first("needs-retry.*.*", stop_on_quota)
    sess.events.register_first("needs-retry.*.*", _out_of_attempts)
    sess.events.register_first("before-send.*.*", _out_of_time)
    for event_name, handler in _state["hooks"]:
        sess.events.register(event_name, handler)
    return sess


def base_session() -> boto3.session.Session:
    with _lock:
        if _state["session"] is None:
            _state["session"] = _new_session()
        return _state["session"]


def _config(settings: Settings) -> Config:
    return Config(
        retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
        max_pool_connections=max(10, settings.max_workers * 2),
    )


def own_account(settings: Optional[Settings] = None) -> str:
    settings = settings or get_settings()
    if settings.account_id:
        return settings.account_id
    with _lock:
        if _state["account"] is not None:
            return _state["account"]
        building = _state["building"].setdefault("self", threading.Lock())
    with building:          # one GetCallerIdentity at a time, outside the shared lock
        with _lock:
            if _state["account"] is not None:
                return _state["account"]
        sts = client("sts", None, settings.region, settings)
        account = call("sts:GetCallerIdentity", sts.get_caller_identity)["Account"]
        with _lock:
            _state["account"] = account
            return account


def _session_for(account: Optional[str], settings: Settings) -> boto3.session.Session:
    """The session into ``account`` for the current actor (``core.actor``): AssumeRole with the
    actor as ``SourceIdentity`` and the path in the session name, so the member account's
    CloudTrail names who caused each change. SourceIdentity is fixed for a session's life, so
    sessions are cached per (account, source identity, session name), at most MAX_SESSIONS
    (least recently used dropped, with their clients). AssumeRole runs outside the shared lock:
    one build per session key at a time, and other keys (other accounts) go on."""
    if account is None or account == own_account(settings):
        return base_session()
    who = actor.current()
    key = (account, who.source_identity, who.session_name)
    with _lock:
        fresh = _fresh_session(key)
        if fresh is not None:
            return fresh
        building = _state["building"].setdefault(key, threading.Lock())
    with building:
        with _lock:
            fresh = _fresh_session(key)     # built by the thread this one waited for
            if fresh is not None:
                return fresh
        sts = client("sts", None, settings.region, settings)
        arn = (f"arn:{naming.partition_for(settings.region)}:iam::{account}:role/"
               f"{settings.cross_account_role}")
        kw: dict[str, Any] = {"RoleArn": arn, "RoleSessionName": who.session_name,
                              "SourceIdentity": who.source_identity, "DurationSeconds": 3600}
        if settings.external_id:
            kw["ExternalId"] = settings.external_id
        creds = call(f"sts:AssumeRole {arn}", sts.assume_role, **kw)["Credentials"]
        sess = _new_session(aws_access_key_id=creds["AccessKeyId"],
                            aws_secret_access_key=creds["SecretAccessKey"],
                            aws_session_token=creds["SessionToken"])
        with _lock:
            _state["sessions"].pop(key, None)
            _state["sessions"][key] = (sess, creds["Expiration"].timestamp())
            # drop the clients of the expired session, and of sessions past the bound
            gone = {key} | set(list(_state["sessions"])[:-MAX_SESSIONS])
            for old in gone - {key}:
                _state["sessions"].pop(old, None)
                _state["building"].pop(old, None)
            _state["clients"] = {k: v for k, v in _state["clients"].items() if k[0] not in gone}
            return sess


def _fresh_session(key: tuple) -> Optional[boto3.session.Session]:
    """The key's assumed-role session unless it expires soon, marked most recently used (call
    under ``_lock``)."""
    cached = _state["sessions"].get(key)
    if cached and cached[1] - time.time() > RENEW_BEFORE:
        _state["sessions"][key] = _state["sessions"].pop(key)
        return cached[0]
    return None


def _session_expiring(key: tuple) -> bool:
    cached = _state["sessions"].get(key)
    return bool(cached and cached[1] - time.time() <= RENEW_BEFORE)


@functools.lru_cache(maxsize=256)
def available_regions(partition: str) -> frozenset:
    """The regions where botocore's endpoint data lists EKS in ``partition`` (empty if none)."""
    return frozenset(base_session().get_available_regions("eks", partition_name=partition))


def read_secret(arn: str, settings: Settings) -> str:
    """A Secrets Manager secret's string (the external id), in kip's own account."""
    region = arn.split(":")[3] if arn.count(":") >= 6 else settings.region
    r = call(f"secretsmanager:GetSecretValue {arn}",
             client("secretsmanager", None, region or settings.region, settings).get_secret_value,
             SecretId=arn)
    return r.get("SecretString") or ""


def client(service: str, account: Optional[str], region: str,
           settings: Optional[Settings] = None) -> Any:
    settings = settings or get_settings()
    if service in ("sts", "dynamodb", "ssm") or account is None or \
            account == own_account(settings):
        key: tuple = ("self", region, service)
    else:
        who = actor.current()
        key = ((account, who.source_identity, who.session_name), region, service)
    with _lock:
        c = _state["clients"].get(key)
        if c is not None and (key[0] == "self" or not _session_expiring(key[0])):
            return c
        if key[0] == "self":
            c = _state["clients"][key] = base_session().client(
                service, region_name=region, config=_config(settings))
            return c
    sess = _session_for(account, settings)      # may call STS: outside the shared lock
    with _lock:
        c = _state["clients"].get(key)
        if c is None or _session_expiring(key[0]):
            c = _state["clients"][key] = sess.client(service, region_name=region,
                                                     config=_config(settings))
        return c
