"""Pure: team scopes (``KIP_AUTHZ``) and what a caller's teams may read and write.

The document::

    {"claim": "groups",                  # the token claim naming the caller's teams
     "prefix": "group:default/",         # optional: only values with it count, stripped
     "admins": ["platform"],             # these teams see and do everything
     "teams": {"payments": {"accounts": ["111122223333"], "clusters": ["payments-*"]}},
     "principals": {"arn:aws:iam::*:role/payments-*": "payments"}}   # IAM auth mode

A team covers a cluster when one of its ``accounts`` (12 digits, or ``*``) is the cluster's
account and one of its ``clusters`` globs (fnmatch, case-sensitive) matches the cluster's name.
A malformed document raises ``ValueError`` naming ``KIP_AUTHZ`` and the offending key, so a stage
refuses to start rather than guessing.
"""
from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

KEY = "KIP_AUTHZ"
TEAM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
CLAIM_RE = re.compile(r"^[A-Za-z0-9_.:/#@-]{1,200}$")
ACCOUNT_RE = re.compile(r"^([0-9]{12}|\*)$")
GLOB_RE = re.compile(r"^[A-Za-z0-9_*?\[\]!-]{1,100}$")
ARN_GLOB_RE = re.compile(r"^arn:[A-Za-z0-9_*?:/+=,.@-]{1,1000}$")
MAX_TEAMS = 64          # per caller, kept in the authorizer's context (a string of bounded size)


@dataclass(frozen=True)
class Scope:
    accounts: tuple
    clusters: tuple

    def covers(self, account: str, name: str) -> bool:
        return ("*" in self.accounts or account in self.accounts) and \
            any(fnmatch.fnmatchcase(name, glob) for glob in self.clusters)

    def describe(self) -> dict:
        return {"accounts": list(self.accounts), "clusters": list(self.clusters)}


@dataclass(frozen=True)
class Authz:
    claim: str
    prefix: str = ""
    admins: frozenset = frozenset()
    teams: Mapping[str, Scope] = field(default_factory=dict)
    principals: tuple = ()          # ((arn glob, team), ...) in document order

    def teams_from_claims(self, claims: Mapping[str, Any]) -> tuple:
        """The caller's teams: the values of ``claim`` (a string or a list of strings; a dotted
        name reaches into nested objects) that carry ``prefix``, with it removed."""
        value = _claim(claims, self.claim)
        values = [value] if isinstance(value, str) else \
            [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else []
        out = []
        for v in values:
            if self.prefix:
                if not v.startswith(self.prefix):
                    continue
                v = v[len(self.prefix):]
            if TEAM_RE.fullmatch(v) and v not in out:
                out.append(v)
        return tuple(out[:MAX_TEAMS])

    def teams_for_arn(self, arn: Optional[str]) -> tuple:
        """IAM auth mode: the teams whose ``principals`` glob matches the caller's ARN."""
        if not arn:
            return ()
        return tuple(dict.fromkeys(team for glob, team in self.principals
                                   if fnmatch.fnmatchcase(arn, glob)))


@dataclass(frozen=True)
class Access:
    """What one caller may do. ``unrestricted``: no scopes configured (local stage, or IAM auth
    without KIP_AUTHZ): everything, as before scopes existed."""
    teams: tuple = ()
    admin: bool = False
    scopes: Mapping[str, Scope] = field(default_factory=dict)
    unrestricted: bool = False

    @classmethod
    def everyone(cls) -> "Access":
        return cls(unrestricted=True)

    @classmethod
    def of(cls, authz: Authz, teams: Iterable[str]) -> "Access":
        teams = tuple(teams)
        return cls(teams=teams, admin=any(t in authz.admins for t in teams),
                   scopes={t: authz.teams[t] for t in teams if t in authz.teams})

    @property
    def sees_all(self) -> bool:
        return self.unrestricted or self.admin

    def covering(self, account: str, name: str) -> tuple:
        return tuple(t for t, s in self.scopes.items() if s.covers(account, name))

    def can_read(self, account: str, name: str, owner_team: Optional[str] = None) -> bool:
        """Reads: a cluster one of the caller's teams covers, or whose record it owns."""
        return self.sees_all or bool(self.covering(account, name)) or \
            (owner_team is not None and owner_team in self.teams)

    def write_team(self, account: str, name: str, owner_team: Optional[str] = None,
                   wanted: Optional[str] = None) -> Optional[str]:
        """The team a write acts for (recorded as the record's ``owner_team``), or ``None`` for
        an unrestricted caller with no team asked. Raises ``PermissionError`` with the reason:
        no team of the caller covers the cluster, the record belongs to a team the caller is
        not in, or ``wanted`` is not one of the caller's covering teams."""
        if self.sees_all:
            return wanted or owner_team
        covering = self.covering(account, name)
        if owner_team is not None and owner_team not in covering:
            raise PermissionError(f"the record belongs to team {owner_team!r}, which is not one "
                                  "of the caller's teams covering it")
        if wanted is not None and wanted not in covering:
            raise PermissionError(f"team {wanted!r} is not one of the caller's teams covering "
                                  "this cluster")
        if not covering:
            raise PermissionError("no team of the caller covers this cluster's account and name")
        if owner_team is not None:
            return owner_team
        if wanted is None and len(covering) > 1:
            raise PermissionError(f"several of the caller's teams cover this cluster "
                                  f"({', '.join(covering)}); name one in 'team'")
        return wanted or covering[0]

    def describe(self) -> dict:
        """The caller's scopes, for a 403's message (what the token may touch)."""
        return {"teams": list(self.teams), "admin": self.admin,
                "scopes": {t: s.describe() for t, s in self.scopes.items()}}


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# ----------------------------------------------------------------------------- parsing

def parse(raw: Any) -> Authz:
    """``KIP_AUTHZ`` (JSON text or an already-decoded object) -> :class:`Authz`."""
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{KEY} is not valid JSON: {exc}"[:300]) from None
    doc = _obj(raw, KEY)
    unknown = set(doc) - {"claim", "prefix", "admins", "teams", "principals"}
    if unknown:
        raise ValueError(f"{KEY}: unknown key {sorted(unknown)[0]!r}; allowed: claim, prefix, "
                         "admins, teams, principals")
    claim = doc.get("claim")
    if not isinstance(claim, str) or not CLAIM_RE.fullmatch(claim):
        raise ValueError(f"{KEY}.claim must name the token claim listing teams (e.g. 'groups' "
                         "or 'ent')")
    prefix = doc.get("prefix", "")
    if not isinstance(prefix, str) or len(prefix) > 200:
        raise ValueError(f"{KEY}.prefix must be a string (e.g. 'group:default/')")
    teams = {name: _scope(name, spec) for name, spec in _obj(doc.get("teams", {}),
                                                            f"{KEY}.teams").items()}
    admins = _names(doc.get("admins", []), f"{KEY}.admins")
    principals = tuple(_principal(glob, team, set(teams) | set(admins))
                       for glob, team in _obj(doc.get("principals", {}),
                                              f"{KEY}.principals").items())
    return Authz(claim=claim, prefix=prefix, admins=frozenset(admins), teams=teams,
                 principals=principals)


def _obj(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object")
    return value


def _names(value: Any, where: str) -> list:
    if not isinstance(value, list) or not all(isinstance(v, str) and TEAM_RE.fullmatch(v)
                                              for v in value):
        raise ValueError(f"{where} must be a list of team names ([A-Za-z0-9_.@-], up to 64)")
    return value


def _scope(name: Any, spec: Any) -> Scope:
    where = f"{KEY}.teams.{str(name)[:64]}"
    if not TEAM_RE.fullmatch(str(name)):
        raise ValueError(f"{where}: not a team name ([A-Za-z0-9_.@-], up to 64)")
    spec = _obj(spec, where)
    if set(spec) - {"accounts", "clusters"}:
        raise ValueError(f"{where}: only 'accounts' and 'clusters' are allowed")
    accounts, clusters = spec.get("accounts"), spec.get("clusters")
    if not isinstance(accounts, list) or not accounts or \
            not all(isinstance(a, str) and ACCOUNT_RE.fullmatch(a) for a in accounts):
        raise ValueError(f"{where}.accounts must be a non-empty list of 12-digit account ids "
                         "or '*'")
    if not isinstance(clusters, list) or not clusters or \
            not all(isinstance(c, str) and GLOB_RE.fullmatch(c) for c in clusters):
        raise ValueError(f"{where}.clusters must be a non-empty list of cluster-name globs "
                         "(e.g. 'payments-*')")
    return Scope(tuple(accounts), tuple(clusters))


def _principal(glob: Any, team: Any, known: set) -> tuple:
    where = f"{KEY}.principals"
    if not isinstance(glob, str) or not ARN_GLOB_RE.fullmatch(glob):
        raise ValueError(f"{where}: {str(glob)[:80]!r} is not an ARN glob (arn:...)")
    if team not in known:
        raise ValueError(f"{where}.{glob[:80]}: {str(team)[:64]!r} is not a team of "
                         f"{KEY}.teams or {KEY}.admins")
    return glob, team
