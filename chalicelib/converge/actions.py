"""The plan as data: an action names an adapter operation (``op``) and its parameters, the ids
of actions that must finish first (``after``), and its effect on the record (``effect``, see
``core.records``). The planner, the alarm kinds and the executor all speak this; it imports only
core, so none of them needs another to name an action."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from chalicelib.core.records import Effect


@dataclass(frozen=True)
class Action:
    id: str
    op: str                 # adapter method name
    kind: str               # create | update | delete
    resource: str           # queue | dlq | rule | targets | policy | policy_version | attachment
    name: str
    params: dict
    after: tuple = ()
    effect: Optional[Effect] = None     # what the record says once this action is done
    owner: Optional[str] = None         # an existing resource it meets must carry this owner

    def to_dict(self) -> dict:
        return {"id": self.id, "op": self.op, "kind": self.kind, "resource": self.resource,
                "name": self.name, "params": self.params, "after": list(self.after)}


def depth(actions: list[Action]) -> int:
    """Length of the longest dependency chain: the plan's sequential round-trips."""
    by_id = {a.id: a for a in actions}
    memo: dict[str, int] = {}

    def d(aid: str) -> int:
        if aid not in memo:
            memo[aid] = 1 + max((d(p) for p in by_id[aid].after if p in by_id), default=0)
        return memo[aid]
    return max((d(a.id) for a in actions), default=0)


class Plan(list):
    """Actions in the order they were added; ``add`` returns the action (for ``after``)."""

    def add(self, *args: Any, **kw: Any) -> Action:
        a = Action(*args, **kw)
        self.append(a)
        return a
