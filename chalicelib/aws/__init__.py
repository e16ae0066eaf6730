"""The only package that touches boto3.

* ``clients``: sessions, assume-role, retry configuration, hooks.
* ``calls``: one call -> its answer or a domain error by error code.
* ``target``: the adapter for one (account, region).
* ``store``: the DynamoDB records table.
* ``status``: status-change events for the portal.
* ``org``: Organizations membership (KIP_ORG_ID).
"""
from chalicelib.aws.calls import is_write, translate
from chalicelib.aws.clients import (add_hook, available_regions, client, own_account, read_secret,
                                    request_budget, reset)
from chalicelib.aws.org import Organization
from chalicelib.aws.status import publish_status
from chalicelib.aws.store import ConditionFailed, Store
from chalicelib.aws.target import Target

__all__ = ["ConditionFailed", "Organization", "Store", "Target", "add_hook", "available_regions", "client",
           "is_write", "own_account", "publish_status", "read_secret", "request_budget", "reset",
           "translate"]
