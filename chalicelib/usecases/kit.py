"""The one typed kit every use case takes: built once (``app.py``, a test, the bench) and frozen.

It holds what the use cases share across runs; each use case declares in its signature that it
takes the kit, and reads only the parts it uses. Nothing reaches through one use case into
another's attributes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from chalicelib import aws
from chalicelib.aws.registry import Registry
from chalicelib.config import Settings, get_settings
from chalicelib.converge.executor import Workers
from chalicelib.core import naming
from chalicelib.usecases.recorder import Recorder
from chalicelib.usecases.role_list import RoleList
from chalicelib.usecases.rule_room import RuleRoom


@dataclass(frozen=True)
class Kit:
    settings: Settings
    clock: Callable[[], float]
    registry: Registry          # records, leases, versions (DynamoDB)
    recorder: Recorder          # a run's outcome and the portal's status events
    rule_room: RuleRoom         # the rule quota, counted once a minute per account-region
    workers: Workers            # the bounded pool every AWS call runs on
    org: aws.Organization       # KIP_ORG_ID membership, cached
    role_list: Optional[RoleList] = None    # ListRoles per account, for IRSA discovery

    def names(self, cid: naming.ClusterId, legacy: bool = False) -> naming.Names:
        """The names kip would give this cluster's resources (a record's names win)."""
        return naming.names_for(cid, self.settings.prefix, self.settings.iam_path, legacy)


def build(settings: Optional[Settings] = None, clock: Callable[[], float] = time.time) -> Kit:
    settings = settings or get_settings()
    registry = Registry(aws.Store(settings), settings, clock)
    return Kit(settings=settings, clock=clock, registry=registry,
               recorder=Recorder(registry, settings, clock), rule_room=RuleRoom(settings, clock),
               workers=Workers(settings.max_workers), org=aws.Organization(settings),
               role_list=RoleList(clock, settings.role_list_seconds))
