"""Runs a plan on its dependency graph; a plan-only runner for dry runs.

Actions start as soon as the actions they depend on are done (``graphlib.TopologicalSorter``), at
most ``Workers`` at once; the first failure stops scheduling, actions already running finish, and
the result says what was done and what failed.
"""
from __future__ import annotations

import contextvars
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Any, Callable, Optional, Sequence

from chalicelib import errors
from chalicelib.core import naming
from chalicelib.converge.actions import Action


class Workers:
    """A bounded thread pool, made on first use. Tasks never wait on other pool tasks (callers
    submit and wait from their own thread), so a busy pool cannot starve itself."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Future:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="kip-aws")
        # the caller's context (who is acting: core.actor) goes with the task to its thread
        return self._pool.submit(contextvars.copy_context().run, fn, *args, **kw)

    def shutdown(self) -> None:
        """Stop: queued tasks are dropped, running ones finish (a dead process, in tests)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def done(value: Any) -> Future:
    """A future already holding ``value``: something known stands in for a read."""
    fut: Future = Future()
    fut.set_result(value)
    return fut


def gather(futures: Sequence[Future]) -> list:
    """Wait for all; raise the first failure in ``futures`` order, else the results in order."""
    wait(futures)
    for fut in futures:
        exc = fut.exception()
        if exc is not None:
            raise exc
    return [f.result() for f in futures]


@dataclass
class Run:
    done: dict[str, dict] = field(default_factory=dict)     # action id -> the adapter's answer
    failure: Optional[tuple[Action, errors.KipError]] = None

    def finished(self, actions: Sequence[Action]) -> list[Action]:
        return [a for a in actions if a.id in self.done]


def execute(adapter: Any, actions: Sequence[Action], workers: Workers) -> Run:
    ids = {a.id for a in actions}
    by_id = {a.id: a for a in actions}
    graph = TopologicalSorter({a.id: [p for p in a.after if p in ids] for a in actions})
    graph.prepare()
    run, running = Run(), {}
    while True:
        if run.failure is None:
            for aid in graph.get_ready():
                running[workers.submit(_perform, adapter, by_id[aid])] = by_id[aid]
        if not running:
            return run
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for fut in finished:
            action = running.pop(fut)
            try:
                run.done[action.id] = fut.result()
                graph.done(action.id)
            except errors.KipError as exc:
                run.failure = run.failure or (action, exc)


def _perform(adapter: Any, action: Action) -> dict:
    try:
        answer = getattr(adapter, action.op)(**action.params) or {}
    except errors.KipError:
        raise
    except Exception as exc:     # an unexpected library error: still a recorded failure
        raise errors.AwsCallFailed(f"{action.op} {action.name} failed: "
                                   f"{type(exc).__name__}: {exc}", step=action.id) from exc
    if action.owner and answer.get("existed") and \
            not naming.owned_by(answer.get("tags"), action.owner):
        raise errors.ResourceNotOwned(
            f"{action.resource} {action.name!r} already exists and is not managed by this service "
            f"for cluster {action.owner}; nothing was changed", resource=action.name,
            resource_type=action.resource)
    return answer


def preview(actions: Sequence[Action]) -> list[dict]:
    """The plan-only runner: what ``execute`` would do, as printable data."""
    return [a.to_dict() for a in actions]
