"""The only module that touches boto3.

* Clients are created lazily, once per (account, region, service), and shared between threads
  (boto3 clients are thread-safe; sessions are not, so creation happens under a lock).
* Retries are botocore's (``standard`` or ``adaptive`` mode): no hand-written retry loops.
* Another account is reached by assuming ``KIP_CROSS_ACCOUNT_ROLE`` there through STS.
* ``ClientError`` becomes a domain error by its error *code*; "already gone" on a delete is success.
"""
from __future__ import annotations

import functools
import json
import threading
import time
from typing import Any, Callable, Optional

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError as BotoConnectionError
from botocore.exceptions import ReadTimeoutError, ConnectTimeoutError

from chalicelib import errors, naming
from chalicelib.config import Settings, get_settings
from chalicelib.planner import RoleState

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

_lock = threading.RLock()
_state: dict[str, Any] = {"session": None, "clients": {}, "sessions": {}, "account": None,
                          "hooks": []}


# ----------------------------------------------------------------------------- sessions/clients

def add_hook(event_name: str, handler: Callable[..., Any]) -> None:
    """Register a botocore event hook on every session and client, now and later (metrics,
    tests). A client copies its session's hooks when it is made, so cached clients get it too."""
    with _lock:
        _state["hooks"].append((event_name, handler))
        for sess in _all_sessions():
            sess.events.register(event_name, handler)
        for c in _state["clients"].values():
            c.meta.events.register(event_name, handler)


def reset() -> None:
    """Forget every session, client and hook (a fresh start, e.g. per test)."""
    with _lock:
        _state.update(session=None, clients={}, sessions={}, account=None, hooks=[])


def _all_sessions() -> list:
    out = [s for s, _ in _state["sessions"].values()]
    if _state["session"] is not None:
        out.append(_state["session"])
    return out


def _new_session(**kw: Any) -> boto3.session.Session:
    sess = boto3.session.Session(**kw)
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
        if _state["account"] is None:
            sts = client("sts", None, settings.region, settings)
            _state["account"] = _call("sts:GetCallerIdentity", sts.get_caller_identity)["Account"]
        return _state["account"]


def _session_for(account: Optional[str], settings: Settings) -> boto3.session.Session:
    if account is None or account == own_account(settings):
        return base_session()
    with _lock:
        cached = _state["sessions"].get(account)
        if cached and cached[1] - time.time() > 300:
            return cached[0]
        sts = client("sts", None, settings.region, settings)
        arn = (f"arn:{_partition(settings.region)}:iam::{account}:role/"
               f"{settings.cross_account_role}")
        kw: dict[str, Any] = {"RoleArn": arn, "RoleSessionName": "kip-provisioner",
                              "DurationSeconds": 3600}
        if settings.external_id:
            kw["ExternalId"] = settings.external_id
        creds = _call(f"sts:AssumeRole {arn}", sts.assume_role, **kw)["Credentials"]
        sess = _new_session(aws_access_key_id=creds["AccessKeyId"],
                            aws_secret_access_key=creds["SecretAccessKey"],
                            aws_session_token=creds["SessionToken"])
        _state["sessions"][account] = (sess, creds["Expiration"].timestamp())
        # drop the clients of the expired session
        _state["clients"] = {k: v for k, v in _state["clients"].items() if k[0] != account}
        return sess


def _partition(region: str) -> str:
    return naming.partition_for(region)


@functools.lru_cache(maxsize=256)
def region_known(region: str) -> bool:
    """Whether botocore's endpoint data lists EKS in ``region`` (a well-formed but unknown region
    would otherwise surface as a connection error after every retry). Partitions the SDK has no
    region list for are not second-guessed."""
    partition = naming.partition_for(region)
    known = base_session().get_available_regions("eks", partition_name=partition)
    return not known or region in known


def client(service: str, account: Optional[str], region: str,
           settings: Optional[Settings] = None) -> Any:
    settings = settings or get_settings()
    if service in ("sts", "dynamodb") or account is None:
        key: tuple = ("self", region, service)
    else:
        key = (account, region, service)
    with _lock:
        c = _state["clients"].get(key)
        if c is None or (key[0] != "self" and _session_expiring(account)):
            sess = base_session() if key[0] == "self" else _session_for(account, settings)
            c = sess.client(service, region_name=region, config=_config(settings))
            _state["clients"][key] = c
        return c


def _session_expiring(account: Optional[str]) -> bool:
    cached = _state["sessions"].get(account)
    return bool(cached and cached[1] - time.time() <= 300)


# ----------------------------------------------------------------------------- errors

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


def _call(step: str, fn: Callable[..., Any], *args: Any, gone_ok: bool = False,
          **kw: Any) -> Any:
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


def _tags_list(tags: dict) -> list[dict]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _tags_dict(tags: list | None) -> dict:
    return {t["Key"]: t["Value"] for t in tags or []}


# ----------------------------------------------------------------------------- the adapter

class Target:
    """One (account, region): the read and write calls the planner's actions name."""

    def __init__(self, account: str, region: str, settings: Optional[Settings] = None) -> None:
        self.account, self.region = account, region
        self.settings = settings or get_settings()

    def _c(self, service: str) -> Any:
        return client(service, self.account, self.region, self.settings)

    def warm(self) -> None:
        """Create every client up front (one round of credential/endpoint setup, not per call)."""
        for service in ("sqs", "events", "iam", "eks"):
            self._c(service)

    # -- reads ------------------------------------------------------------------------------
    def describe_cluster(self, name: str) -> dict:
        try:
            c = self._c("eks").describe_cluster(name=name)["cluster"]
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                raise errors.ClusterNotFound(
                    f"EKS cluster {name!r} does not exist in account {self.account} region "
                    f"{self.region}; nothing was created", field="cluster_name") from exc
            raise translate(exc, f"eks:DescribeCluster {name}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"eks:DescribeCluster {name}") from exc
        return {"name": c["name"], "arn": c.get("arn"), "status": c.get("status"),
                "tags": c.get("tags") or {}, "version": c.get("version")}

    def list_clusters(self) -> list[str]:
        names: list[str] = []
        paginator = self._c("eks").get_paginator("list_clusters")
        for page in _call("eks:ListClusters", lambda: list(paginator.paginate())):
            names.extend(page.get("clusters", []))
        return names

    def queue_url(self, name: str) -> Optional[str]:
        r = _call(f"sqs:GetQueueUrl {name}", self._c("sqs").get_queue_url, QueueName=name,
                  gone_ok=True)
        return r["QueueUrl"] if r else None

    def queue_attributes(self, url: str) -> Optional[dict]:
        r = _call(f"sqs:GetQueueAttributes {url}", self._c("sqs").get_queue_attributes,
                  QueueUrl=url, AttributeNames=["All"], gone_ok=True)
        return None if r is None else r.get("Attributes", {})

    def queue_tags(self, url: str) -> dict:
        r = _call(f"sqs:ListQueueTags {url}", self._c("sqs").list_queue_tags, QueueUrl=url,
                  gone_ok=True)
        return (r or {}).get("Tags", {}) or {}

    def describe_rule(self, name: str) -> Optional[dict]:
        return _call(f"events:DescribeRule {name}", self._c("events").describe_rule, Name=name,
                     gone_ok=True)

    def rule_targets(self, name: str) -> list[dict]:
        r = _call(f"events:ListTargetsByRule {name}", self._c("events").list_targets_by_rule,
                  Rule=name, gone_ok=True)
        return [{"Id": t["Id"], "Arn": t["Arn"]} for t in (r or {}).get("Targets", [])]

    def rule_tags(self, arn: str) -> dict:
        r = _call(f"events:ListTagsForResource {arn}", self._c("events").list_tags_for_resource,
                  ResourceARN=arn, gone_ok=True)
        return _tags_dict((r or {}).get("Tags"))

    def get_policy(self, arn: str) -> Optional[dict]:
        r = _call(f"iam:GetPolicy {arn}", self._c("iam").get_policy, PolicyArn=arn, gone_ok=True)
        return None if r is None else r["Policy"]

    def policy_document(self, arn: str, version: str) -> Optional[dict]:
        r = _call(f"iam:GetPolicyVersion {arn}", self._c("iam").get_policy_version,
                  PolicyArn=arn, VersionId=version, gone_ok=True)
        if r is None:
            return None
        doc = r["PolicyVersion"]["Document"]
        return json.loads(doc) if isinstance(doc, str) else doc

    def policy_versions(self, arn: str) -> list[dict]:
        r = _call(f"iam:ListPolicyVersions {arn}", self._c("iam").list_policy_versions,
                  PolicyArn=arn, gone_ok=True)
        return [{"VersionId": v["VersionId"], "IsDefaultVersion": v["IsDefaultVersion"]}
                for v in (r or {}).get("Versions", [])]

    def policy_roles(self, arn: str) -> list[str]:
        r = _call(f"iam:ListEntitiesForPolicy {arn}", self._c("iam").list_entities_for_policy,
                  PolicyArn=arn, EntityFilter="Role", gone_ok=True)
        return [x["RoleName"] for x in (r or {}).get("PolicyRoles", [])]

    def role_attachments(self, role: str) -> RoleState:
        r = _call(f"iam:ListAttachedRolePolicies {role}",
                  self._c("iam").list_attached_role_policies, RoleName=role, MaxItems=1000,
                  gone_ok=True)
        if r is None:
            return RoleState(name=role, exists=False)
        return RoleState(name=role, exists=True,
                         attached=[p["PolicyArn"] for p in r.get("AttachedPolicies", [])])

    def resolve_kms_key(self, key_id: str) -> str:
        """The key's ARN; refuses AWS-managed keys, which EventBridge cannot use."""
        try:
            meta = self._c("kms").describe_key(KeyId=key_id)["KeyMetadata"]
        except ClientError as exc:
            if error_code(exc) in ("NotFoundException", "InvalidArnException"):
                raise errors.ValidationError(
                    f"kms_key_id: key {key_id!r} was not found in account {self.account} region "
                    f"{self.region}", field="kms_key_id",
                    allowed="an existing customer-managed KMS key") from exc
            raise translate(exc, f"kms:DescribeKey {key_id}") from exc
        if meta.get("KeyManager") == "AWS":
            raise errors.ValidationError(
                "kms_key_id: AWS-managed keys cannot be used: EventBridge cannot encrypt with "
                "them", field="kms_key_id", allowed="a customer-managed KMS key")
        return meta["Arn"]

    # -- writes (named by planner actions) ---------------------------------------------------
    def create_queue(self, name: str, attributes: dict, tags: dict) -> dict:
        r = _call(f"sqs:CreateQueue {name}", self._c("sqs").create_queue, QueueName=name,
                  Attributes=attributes, tags=tags)
        return {"url": r["QueueUrl"]}

    def set_queue_attributes(self, url: str, attributes: dict) -> dict:
        _call(f"sqs:SetQueueAttributes {url}", self._c("sqs").set_queue_attributes,
              QueueUrl=url, Attributes=attributes)
        return {}

    def tag_queue(self, url: str, tags: dict) -> dict:
        _call(f"sqs:TagQueue {url}", self._c("sqs").tag_queue, QueueUrl=url, Tags=tags)
        return {}

    def delete_queue(self, url: str) -> dict:
        _call(f"sqs:DeleteQueue {url}", self._c("sqs").delete_queue, QueueUrl=url, gone_ok=True)
        return {}

    def put_rule(self, name: str, pattern: dict, tags: dict, description: str) -> dict:
        r = _call(f"events:PutRule {name}", self._c("events").put_rule, Name=name,
                  EventPattern=json.dumps(pattern), State="ENABLED",
                  Description=description[:512], Tags=_tags_list(tags))
        return {"arn": r["RuleArn"]}

    def tag_rule(self, arn: str, tags: dict) -> dict:
        _call(f"events:TagResource {arn}", self._c("events").tag_resource, ResourceARN=arn,
              Tags=_tags_list(tags))
        return {}

    def put_targets(self, rule: str, targets: list) -> dict:
        r = _call(f"events:PutTargets {rule}", self._c("events").put_targets, Rule=rule,
                  Targets=targets)
        if r.get("FailedEntryCount"):
            failed = r["FailedEntries"][0]
            raise errors.AwsCallFailed(
                f"events:PutTargets {rule} failed: {failed.get('ErrorCode')}: "
                f"{failed.get('ErrorMessage')}", step=f"events:PutTargets {rule}",
                aws_code=failed.get("ErrorCode"))
        return {}

    def remove_targets(self, rule: str, ids: list) -> dict:
        _call(f"events:RemoveTargets {rule}", self._c("events").remove_targets, Rule=rule,
              Ids=ids, Force=False, gone_ok=True)
        return {}

    def delete_rule(self, name: str) -> dict:
        _call(f"events:DeleteRule {name}", self._c("events").delete_rule, Name=name,
              gone_ok=True)
        return {}

    def create_policy(self, name: str, path: str, document: dict, tags: dict,
                      description: str) -> dict:
        step = f"iam:CreatePolicy {name}"
        try:
            r = self._c("iam").create_policy(
                PolicyName=name, Path=path, PolicyDocument=json.dumps(document),
                Description=description[:1000], Tags=_tags_list(tags))
        except ClientError as exc:
            if error_code(exc) != "EntityAlreadyExists":
                raise translate(exc, step) from exc
            # Our own create whose answer was lost and which botocore retried, or a policy made
            # since we looked: adopt it only if it carries this cluster's ownership tags.
            arn = f"arn:{_partition(self.region)}:iam::{self.account}:policy{path}{name}"
            found = self.get_policy(arn)
            ours = {k: tags[k] for k in (naming.MANAGED_BY_TAG, naming.CLUSTER_TAG)}
            if not found or any(_tags_dict(found.get("Tags")).get(k) != v
                                for k, v in ours.items()):
                raise errors.ResourceNotOwned(
                    f"IAM policy {name!r} already exists and is not managed by this service for "
                    "this cluster; nothing was changed", resource=name,
                    resource_type="IAM policy") from exc
            return {"arn": arn, "version": found.get("DefaultVersionId")}
        except BotoCoreError as exc:
            raise translate(exc, step) from exc
        return {"arn": r["Policy"]["Arn"], "version": r["Policy"].get("DefaultVersionId")}

    def create_policy_version(self, arn: str, document: dict) -> dict:
        r = _call(f"iam:CreatePolicyVersion {arn}", self._c("iam").create_policy_version,
                  PolicyArn=arn, PolicyDocument=json.dumps(document), SetAsDefault=True)
        version = r["PolicyVersion"]["VersionId"]
        if r.get("ResponseMetadata", {}).get("RetryAttempts"):
            # botocore retried: an earlier attempt may have created a version whose answer was
            # lost. Drop non-default versions holding this same document.
            for v in self.policy_versions(arn):
                if not v["IsDefaultVersion"] and \
                        self.policy_document(arn, v["VersionId"]) == document:
                    self.delete_policy_version(arn, v["VersionId"])
        return {"version": version}

    def delete_policy_version(self, arn: str, version: str) -> dict:
        _call(f"iam:DeletePolicyVersion {arn} {version}", self._c("iam").delete_policy_version,
              PolicyArn=arn, VersionId=version, gone_ok=True)
        return {}

    def delete_policy(self, arn: str) -> dict:
        _call(f"iam:DeletePolicy {arn}", self._c("iam").delete_policy, PolicyArn=arn,
              gone_ok=True)
        return {}

    def attach_role_policy(self, role: str, policy_arn: str) -> dict:
        _call(f"iam:AttachRolePolicy {role}", self._c("iam").attach_role_policy, RoleName=role,
              PolicyArn=policy_arn)
        return {}

    def detach_role_policy(self, role: str, policy_arn: str) -> dict:
        _call(f"iam:DetachRolePolicy {role}", self._c("iam").detach_role_policy, RoleName=role,
              PolicyArn=policy_arn, gone_ok=True)
        return {}


# ----------------------------------------------------------------------------- DynamoDB store

class ConditionFailed(Exception):
    """A conditional write lost; ``item`` is the item as it was (when DynamoDB returned it)."""

    def __init__(self, item: Optional[dict]) -> None:
        super().__init__("condition failed")
        self.item = item


_ser, _de = TypeSerializer(), TypeDeserializer()


def _to_ddb(item: dict) -> dict:
    return {k: _ser.serialize(v) for k, v in item.items() if v is not None}


def _plain(value: Any) -> Any:
    from decimal import Decimal
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return value


def _from_ddb(item: Optional[dict]) -> Optional[dict]:
    if not item:
        return None
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


class Store:
    """Low-level, typed access to the records table; record semantics live in ``registry``."""

    STATUS_INDEX = "status-index"

    def __init__(self, settings: Optional[Settings] = None) -> None:
        self.settings = settings or get_settings()
        self.table = self.settings.table_name

    def _c(self) -> Any:
        return client("dynamodb", None, self.settings.region, self.settings)

    def _cond(self, step: str, fn: Callable[..., Any], **kw: Any) -> Any:
        try:
            return fn(**kw)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise ConditionFailed(_from_ddb(exc.response.get("Item"))) from exc
            raise translate(exc, step) from exc
        except BotoCoreError as exc:
            raise translate(exc, step) from exc

    def get(self, key: str) -> Optional[dict]:
        r = _call("dynamodb:GetItem", self._c().get_item, TableName=self.table,
                  Key={"id": {"S": key}}, ConsistentRead=True)
        return _from_ddb(r.get("Item"))

    def put(self, item: dict, condition: str, values: dict, names: Optional[dict] = None) -> None:
        kw: dict[str, Any] = {"TableName": self.table, "Item": _to_ddb(item),
                              "ConditionExpression": condition,
                              "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if values:
            kw["ExpressionAttributeValues"] = _to_ddb(values)
        if names:
            kw["ExpressionAttributeNames"] = names
        self._cond("dynamodb:PutItem", self._c().put_item, **kw)

    def delete(self, key: str, condition: str, values: dict) -> None:
        self._cond("dynamodb:DeleteItem", self._c().delete_item, TableName=self.table,
                   Key={"id": {"S": key}}, ConditionExpression=condition,
                   ExpressionAttributeValues=_to_ddb(values),
                   ReturnValuesOnConditionCheckFailure="ALL_OLD")

    def page(self, limit: int, start: Optional[dict], status: Optional[str]) -> tuple:
        kw: dict[str, Any] = {"TableName": self.table, "Limit": limit}
        if start:
            kw["ExclusiveStartKey"] = _to_ddb(start)
        if status:
            kw.update(IndexName=self.STATUS_INDEX,
                      KeyConditionExpression="#s = :s",
                      ExpressionAttributeNames={"#s": "status"},
                      ExpressionAttributeValues={":s": {"S": status}})
            r = _call("dynamodb:Query", self._c().query, **kw)
        else:
            r = _call("dynamodb:Scan", self._c().scan, **kw)
        items = [_from_ddb(i) for i in r.get("Items", [])]
        return items, _from_ddb(r.get("LastEvaluatedKey"))

    def create_table(self) -> None:
        """For the local stack and tests; deployed stages get the table from CloudFormation."""
        c = self._c()
        try:
            c.create_table(
                TableName=self.table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"},
                                      {"AttributeName": "status", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                GlobalSecondaryIndexes=[{
                    "IndexName": self.STATUS_INDEX,
                    "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"},
                                  {"AttributeName": "id", "KeyType": "RANGE"}],
                    "Projection": {"ProjectionType": "ALL"}}])
            c.get_waiter("table_exists").wait(TableName=self.table,
                                              WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        except ClientError as exc:
            if error_code(exc) != "ResourceInUseException":
                raise translate(exc, "dynamodb:CreateTable") from exc


def publish_status(settings: Settings, detail: dict) -> None:
    """Status-change event for the portal, on the configured bus (off when none is set)."""
    if not settings.status_bus:
        return
    c = client("events", None, settings.region, settings)
    _call("events:PutEvents", c.put_events, Entries=[{
        "Source": settings.status_source, "DetailType": "Interruption Handling Status Changed",
        "Detail": json.dumps(detail, default=str), "EventBusName": settings.status_bus}])
