"""Pure: what exists in AWS, as the adapter reads it (the planner's input)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class QueueState:
    exists: bool = False
    url: Optional[str] = None
    attributes: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)


@dataclass
class RuleState:
    exists: bool = False
    pattern: Optional[dict] = None
    state: Optional[str] = None
    tags: dict = field(default_factory=dict)
    targets: list = field(default_factory=list)    # [{"Id":..., "Arn":...}]


@dataclass
class PolicyState:
    exists: bool = False
    tags: dict = field(default_factory=dict)
    default_version: Optional[str] = None
    document: Optional[dict] = None
    versions: list = field(default_factory=list)    # [{"VersionId", "IsDefaultVersion"}]
    attached_roles: list = field(default_factory=list)  # role names (teardown only)
    attached_users: list = field(default_factory=list)  # user names (teardown only)
    attached_groups: list = field(default_factory=list)  # group names (teardown only)


@dataclass
class RoleState:
    name: str = ""
    exists: bool = False
    attached: list = field(default_factory=list)    # policy ARNs


@dataclass(frozen=True)
class RoleInfo:
    """An IAM role as GetRole reports it: its ARN includes its path."""
    name: str
    arn: str
    path: str = "/"


@dataclass
class PolicyHolders:
    """Every principal a managed policy is attached to (ListEntitiesForPolicy)."""
    roles: list = field(default_factory=list)
    users: list = field(default_factory=list)
    groups: list = field(default_factory=list)


@dataclass(frozen=True)
class ClusterState:
    """The EKS cluster as DescribeCluster reports it."""
    name: str
    arn: Optional[str] = None
    status: Optional[str] = None
    version: Optional[str] = None
    tags: dict = field(default_factory=dict)
    auto_mode: bool = False         # computeConfig.enabled: EKS Auto Mode handles interruptions
    created_at: Optional[float] = None   # createdAt (epoch seconds): tells generations apart
    oidc_issuer: Optional[str] = None    # identity.oidc.issuer: IRSA trusts name it

    def summary(self) -> dict:
        return {"arn": self.arn, "status": self.status, "version": self.version,
                **({"created_at": self.created_at} if self.created_at is not None else {}),
                **({"auto_mode": True} if self.auto_mode else {})}


@dataclass(frozen=True)
class KeyState:
    """A KMS key as DescribeKey reports it."""
    key_id: str
    arn: str
    manager: str                 # AWS | CUSTOMER
    state: Optional[str] = None  # Enabled | Disabled | PendingDeletion | ...
    spec: Optional[str] = None   # SYMMETRIC_DEFAULT | RSA_2048 | ...
    usage: Optional[str] = None


@dataclass
class Observed:
    queue: QueueState = field(default_factory=QueueState)
    dlq: QueueState = field(default_factory=QueueState)
    rules: dict = field(default_factory=dict)        # rule name -> RuleState
    policy: PolicyState = field(default_factory=PolicyState)
    role: RoleState = field(default_factory=RoleState)
    previous_role: Optional[RoleState] = None         # a recorded role we must detach from
    alarms: Optional[dict] = None   # alarm name -> DescribeAlarms + "tags"; None: not managed

    def rule(self, name: str) -> RuleState:
        return self.rules.get(name) or RuleState()
