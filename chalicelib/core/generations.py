"""Pure: may an EKS event still act? An event says what happened; EKS (DescribeCluster now) and
the record (the cluster generation kip wired: its ``createdAt``) say whether it still holds.

CloudTrail delivers late, twice, or replayed (a Lambda retry, the failed-events queue, 14 days
later), and a cluster can be deleted and re-created under the same name and ARN: only a
DeleteCluster about the generation kip wired, for a cluster EKS no longer reports (or reports
DELETING), may tear anything down.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from chalicelib.core.observed import ClusterState

# CloudTrail's eventTime has whole seconds and createdAt fractions; a call and the creation it
# made can sit a second apart either way.
SLACK_SECONDS = 2.0


@dataclass(frozen=True)
class Verdict:
    act: bool
    reason: str = ""        # why not (``stale``, ``live``): logged and answered


def _older(event_time: Optional[float], created_at: Optional[float]) -> bool:
    return event_time is not None and created_at is not None and \
        event_time + SLACK_SECONDS < created_at


def _other_generation(event_created: Optional[float], recorded: Optional[float]) -> bool:
    return event_created is not None and recorded is not None and \
        abs(event_created - recorded) > SLACK_SECONDS


def delete_verdict(now: Optional[ClusterState], recorded_created: Optional[float],
                   event_time: Optional[float], event_created: Optional[float]) -> Verdict:
    """A DeleteCluster event acts only when EKS no longer reports the cluster (or reports it
    DELETING) and the event is about the generation kip recorded."""
    if now is not None and now.status != "DELETING":
        return Verdict(False, f"live: EKS reports the cluster {now.status or 'present'}; "
                              "nothing was removed")
    if now is not None and _other_generation(event_created, now.created_at):
        return Verdict(False, "stale: the event is about an older generation of the cluster "
                              "than the one EKS is deleting now; nothing was removed")
    if _other_generation(event_created, recorded_created) or \
            _older(event_time, recorded_created):
        return Verdict(False, "stale: the event is about an older generation of the cluster "
                              "than the one kip wired (deleted and created again under the "
                              "same name); nothing was removed")
    return Verdict(True)


def create_verdict(recorded_created: Optional[float], event_time: Optional[float],
                   event_created: Optional[float]) -> Verdict:
    """A CreateCluster event older than the generation kip recorded changes nothing."""
    if (event_created is not None and recorded_created is not None and
            event_created + SLACK_SECONDS < recorded_created) or \
            (event_created is None and _older(event_time, recorded_created)):
        return Verdict(False, "stale: the event is about an older generation of the cluster "
                              "than the one kip wired; nothing was changed")
    return Verdict(True)
