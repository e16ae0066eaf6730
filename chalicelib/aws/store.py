"""The records table: plain items in, plain items out; record semantics live in ``registry``."""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Optional

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from chalicelib.aws.calls import call, error_code, translate
from chalicelib.aws.clients import client
from chalicelib.config import Settings, get_settings
from chalicelib.errors import Throttled
from botocore.exceptions import BotoCoreError, ClientError


class ConditionFailed(Exception):
    """A conditional write lost; ``item`` is the item as it was (when DynamoDB returned it)."""

    def __init__(self, item: Optional[dict]) -> None:
        super().__init__("condition failed")
        self.item = item


class _Deserializer(TypeDeserializer):
    """boto3's deserializer, with numbers as int/float rather than Decimal (JSON-ready)."""

    def _deserialize_n(self, value: str) -> Any:
        number = Decimal(value)
        return int(number) if number == number.to_integral_value() else float(number)


_ser, _de = TypeSerializer(), _Deserializer()


def _to_ddb(item: dict) -> dict:
    return {k: _ser.serialize(_decimals(v)) for k, v in item.items() if v is not None}


def _decimals(value: Any) -> Any:
    """TypeSerializer refuses floats: they become Decimals first."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_decimals(v) for v in value]
    return value


def _from_ddb(item: Optional[dict]) -> Optional[dict]:
    if not item:
        return None
    return {k: _de.deserialize(v) for k, v in item.items()}


class Store:
    STATUS_INDEX = "status-index"

    def __init__(self, settings: Optional[Settings] = None) -> None:
        self.settings = settings or get_settings()
        self.table = self.settings.table_name

    def _c(self) -> Any:
        return client("dynamodb", None, self.settings.region, self.settings)

    def _cond(self, step: str, fn: Any, **kw: Any) -> Any:
        try:
            return fn(**kw)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise ConditionFailed(_from_ddb(exc.response.get("Item"))) from exc
            raise translate(exc, step) from exc
        except BotoCoreError as exc:
            raise translate(exc, step) from exc

    def get(self, key: str) -> Optional[dict]:
        r = call("dynamodb:GetItem", self._c().get_item, TableName=self.table,
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

    def page(self, limit: int, start: Optional[dict], status: Optional[str],
             consumer: Optional[str] = None, handler: Optional[str] = None) -> tuple:
        """One page of cluster records. ``consumer`` filters on ``health.consumer``, ``handler``
        on who handles the cluster (FilterExpressions, as is skipping kip's own items: applied
        after ``Limit`` items are read, so a page may hold fewer items, even none, and still
        carry a next key)."""
        kw: dict[str, Any] = {"TableName": self.table, "Limit": limit}
        if start:
            kw["ExclusiveStartKey"] = _to_ddb(start)
        # cluster records only: kip's own items (the token secret, counters, audit logs) have
        # no account_id (the status index holds none of them: they have no status)
        kw["FilterExpression"] = "attribute_exists(account_id)"
        if consumer:
            kw.update(FilterExpression="attribute_exists(account_id) AND #h.#c = :c",
                      ExpressionAttributeNames={"#h": "health", "#c": "consumer"},
                      ExpressionAttributeValues={":c": {"S": consumer}})
        if handler:     # a record from before issue 20 has no handler: kip wired it
            missing = "attribute_not_exists(#hd) OR " if handler == "kip" else ""
            kw.update(FilterExpression=f"{kw['FilterExpression']} AND ({missing}#hd = :hd)",
                      ExpressionAttributeNames={**kw.get("ExpressionAttributeNames", {}),
                                                "#hd": "handler"},
                      ExpressionAttributeValues={**kw.get("ExpressionAttributeValues", {}),
                                                 ":hd": {"S": handler}})
        if status:
            kw.update(IndexName=self.STATUS_INDEX,
                      KeyConditionExpression="#s = :s",
                      ExpressionAttributeNames={**kw.get("ExpressionAttributeNames", {}),
                                                "#s": "status"},
                      ExpressionAttributeValues={**kw.get("ExpressionAttributeValues", {}),
                                                 ":s": {"S": status}})
            r = call("dynamodb:Query", self._c().query, **kw)
        else:
            r = call("dynamodb:Scan", self._c().scan, **kw)
        items = [_from_ddb(i) for i in r.get("Items", [])]
        return items, _from_ddb(r.get("LastEvaluatedKey"))

    def set_fields(self, key: str, fields: dict, version: int, also: Optional[str] = None,
                   also_values: Optional[dict] = None) -> None:
        """Top-level ``fields`` only (UpdateItem; None removes one), if the record is still at
        ``version`` (and ``also`` holds): its other fields, version and lease stay as they are."""
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        sets = [f"#f{i} = :f{i}" for i, v in enumerate(fields.values()) if v is not None]
        drops = [f"#f{i}" for i, v in enumerate(fields.values()) if v is None]
        expr = (f"SET {', '.join(sets)} " if sets else "") + \
            (f"REMOVE {', '.join(drops)}" if drops else "")
        values = {f":f{i}": v for i, v in enumerate(fields.values()) if v is not None}
        self._cond("dynamodb:UpdateItem", self._c().update_item, TableName=self.table,
                   Key={"id": {"S": key}}, UpdateExpression=expr.strip(),
                   ConditionExpression="attribute_exists(id) AND version = :v"
                                       + (f" AND {also}" if also else ""),
                   ExpressionAttributeNames=names,
                   ExpressionAttributeValues=_to_ddb({**values, ":v": version,
                                                      **(also_values or {})}))

    def update(self, key: str, expression: str, condition: str, values: dict,
               names: Optional[dict] = None) -> dict:
        """A conditional UpdateItem; returns the item as written (``ConditionFailed`` carries
        the item as it was)."""
        kw: dict[str, Any] = {"TableName": self.table, "Key": {"id": {"S": key}},
                              "UpdateExpression": expression, "ConditionExpression": condition,
                              "ExpressionAttributeValues": _to_ddb(values),
                              "ReturnValues": "ALL_NEW",
                              "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if names:
            kw["ExpressionAttributeNames"] = names
        r = self._cond("dynamodb:UpdateItem", self._c().update_item, **kw)
        return _from_ddb(r.get("Attributes")) or {}

    def spend(self, key: str, limit: int, expires_at: int) -> bool:
        """Take one unit of the counter item ``key`` unless ``limit`` are already taken (one
        conditional UpdateItem, so every container shares the count); False when spent. The
        item carries ``expires_at`` for the table's TTL. Counter ids start with ``#``, which no
        record id does, and have no ``account_id``: pages of records leave them out."""
        if limit <= 0:
            return False
        try:
            self._cond("dynamodb:UpdateItem", self._c().update_item, TableName=self.table,
                       Key={"id": {"S": key}}, UpdateExpression="ADD used :one SET expires_at = :x",
                       ConditionExpression="attribute_not_exists(used) OR used < :limit",
                       ExpressionAttributeValues=_to_ddb({":one": 1, ":limit": limit,
                                                          ":x": expires_at}))
        except ConditionFailed:
            return False
        return True

    def append_log(self, key: str, entry: dict, keep: int, expires_at: int) -> None:
        """Append ``entry`` to the list ``entries`` of item ``key`` (created on first use), keeping
        the newest ``keep``; the item's ``expires_at`` (the table's TTL) moves with each append.
        One conditional UpdateItem (list_append) while the list has room; when full, the list is
        rewritten without its oldest entries, conditional on the append count ``n`` read, retried
        if another writer appended meanwhile. Log ids start with ``#`` and have no
        ``cluster_name``: pages of records leave them out."""
        try:
            self._cond("dynamodb:UpdateItem", self._c().update_item, TableName=self.table,
                       Key={"id": {"S": key}},
                       UpdateExpression="SET entries = list_append(if_not_exists(entries, :none), "
                                        ":e), expires_at = :x ADD n :one",
                       ConditionExpression="attribute_not_exists(entries) OR size(entries) < :k",
                       ExpressionAttributeValues=_to_ddb({":none": [], ":e": [entry], ":x":
                                                          expires_at, ":one": 1, ":k": keep}))
            return
        except ConditionFailed:
            pass
        for _ in range(5):
            item = self.get(key) or {}
            kept = (item.get("entries") or [])[-(keep - 1):] if keep > 1 else []
            count = int(item.get("n", 0))
            try:
                self.put({"id": key, "entries": kept + [entry], "n": count + 1,
                          "expires_at": expires_at}, "n = :n", {":n": count})
                return
            except ConditionFailed:
                continue
        raise Throttled(f"the audit log {key} kept changing under five rewrites; retry",
                        retry_after=1)

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
