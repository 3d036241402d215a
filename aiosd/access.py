"""Access rules: who may touch whose resources. Pure logic, no I/O (the kernel calls it).

Principals are agents (aid, name, group) or root (aid 0). Resources have an owner:
memory, context, snapshots and crypto keys belong to an agent run (its aid); a storage
namespace and its audit history belong to the agent's name, so that the same agent run
again finds them. An owner (or root) grants rights ("r", "w" or "rw") on one of its
resources to an aid, a name ("name:x"), a group ("group:g") or everyone ("*").
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from aiosd.errors import AiosError

RESOURCES = ("memory", "storage", "context", "audit", "snapshots", "crypto")
BY_NAME = ("storage", "audit", "crypto")  # resources owned by the agent's name, not its run


@dataclass(frozen=True)
class Principal:
    aid: int
    name: str
    group: str = ""
    parent: int = 0

    @property
    def is_root(self) -> bool:
        return self.aid == 0

    def matches(self, grantee: str) -> bool:
        return grantee in ("*", f"aid:{self.aid}", f"name:{self.name}", f"group:{self.group or self.name}")


ROOT = Principal(0, "root")


@dataclass(frozen=True)
class Grant:
    owner: str      # "aid:N" or "name:x"
    resource: str
    grantee: str
    rights: str


def grantee_key(grantee: object) -> str:
    """Normalise what a caller names: 17, "17", "aid:17", "name:x", "group:g", "*"."""
    if isinstance(grantee, bool):
        raise AiosError("EINVAL", "grantee must be an aid, 'name:X', 'group:G' or '*'")
    if isinstance(grantee, int):
        return f"aid:{grantee}"
    if isinstance(grantee, str):
        if grantee.isdigit():
            return f"aid:{int(grantee)}"
        kind, _, value = grantee.partition(":")
        if grantee == "*" or (kind in ("aid", "name", "group") and value):
            return grantee
    raise AiosError("EINVAL", "grantee must be an aid, 'name:X', 'group:G' or '*'")


def owner_key(resource: str, owner: Principal) -> str:
    return f"name:{owner.name}" if resource in BY_NAME else f"aid:{owner.aid}"


class AccessRules:
    def __init__(self) -> None:
        self.grants: set[Grant] = set()

    def grant(self, owner: Principal, resource: str, grantee: object, rights: str = "r") -> Grant:
        res, rights = self._check_args(resource, rights)
        g = Grant(owner_key(res, owner), resource, grantee_key(grantee), rights)
        self.grants = {x for x in self.grants if (x.owner, x.resource, x.grantee) != (g.owner, g.resource, g.grantee)}
        self.grants.add(g)
        return g

    def revoke(self, owner: Principal, resource: str, grantee: object, rights: str = "rw") -> int:
        res, rights = self._check_args(resource, rights)
        key, who = owner_key(res, owner), grantee_key(grantee)
        removed = 0
        for g in list(self.grants):
            if g.owner == key and g.resource == resource and g.grantee == who:
                self.grants.discard(g)
                left = "".join(c for c in g.rights if c not in rights)
                if left:
                    self.grants.add(Grant(g.owner, g.resource, g.grantee, left))
                removed += 1
        return removed

    def allowed(self, caller: Principal, resource: str, owner: Principal, need: str) -> bool:
        """May caller use owner's resource for need ('r' or 'w')?"""
        if caller.is_root:
            return True
        base = resource.split(":")[0]
        if base in BY_NAME and caller.name == owner.name:
            return True
        if caller.aid == owner.aid:
            return True
        key = owner_key(base, owner)
        return any(
            g.owner == key and g.resource == resource and need in g.rights and caller.matches(g.grantee)
            for g in self.grants
        )

    def may_control(self, caller: Principal, target: Principal) -> bool:
        """Signals, suspend/resume, status: root, or the target's parent (or itself)."""
        return caller.is_root or target.parent == caller.aid or target.aid == caller.aid

    def may_set_priority(self, caller: Principal, target: Principal, current: int, wanted: int) -> bool:
        if caller.is_root:
            return True
        # nobody raises a priority without root: not its own, not its children's
        return wanted <= current and (target.aid == caller.aid or target.parent == caller.aid)

    def drop_owner(self, owner: Principal) -> None:
        """An agent run ended: its per-run grants (memory, context, ...) go with it."""
        key = f"aid:{owner.aid}"
        self.grants = {g for g in self.grants if g.owner != key and g.grantee != key}

    @staticmethod
    def _check_args(resource: str, rights: str | None) -> tuple[str, str]:
        base = resource.split(":")[0]
        if base not in RESOURCES and base != "tools":
            raise AiosError("EINVAL", f"resource must be one of {', '.join(RESOURCES)} or tools:NAME")
        rights = rights or "r"
        if not rights or any(c not in "rw" for c in rights):
            raise AiosError("EINVAL", "rights must be 'r', 'w' or 'rw'")
        return base, rights


FILE_ARGS = ("db", "path", "file", "filename")  # arguments by which a tool reads a file


def check_tool_path(path: object, home: str | os.PathLike, agent_uid: int = -1, agent_gid: int = -1) -> str:
    """A file a tool is asked to read for an agent: its real path, or an AiosError.

    The tool runs as the daemon's user, so it must not read what the agent could not:
    nothing under AIOS_HOME (root.token, master.key, the LMDB, other agents' logs and
    tool scratch), and with agent_uid only files that uid may read. Symlinks are resolved
    first and the tool is handed the resolved path."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise AiosError("EINVAL", "a file argument is a non-empty path without NUL bytes")
    p = Path(path).expanduser()
    if not p.is_absolute():
        raise AiosError("EINVAL", f"file argument '{path}' must be an absolute path")
    real = Path(os.path.realpath(p))
    home_real = Path(os.path.realpath(home))
    if real == home_real or home_real in real.parents:
        raise AiosError("EACCES", f"'{path}' is inside the daemon's home; tools do not read it for agents")
    ids = agent_ids(agent_uid, agent_gid)
    if ids and not _readable_by(real, *ids):
        raise AiosError("EACCES", f"'{path}' is not readable by the agents' uid {ids[0]}")
    return str(real)


def agent_ids(uid: int, gid: int = -1) -> tuple[int, int] | None:
    """The (uid, gid) agents run as (config agent_uid/agent_gid), or None: as the daemon.
    Only a daemon running as root can give its agents another uid."""
    if uid <= 0 or os.geteuid() != 0:
        return None
    if gid < 0:
        try:
            import pwd
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
    return uid, gid


def _readable_by(path: Path, uid: int, gid: int) -> bool:
    """Would uid:gid (no supplementary groups) read path? Mode bits only, no ACLs."""
    def can(p: Path, bit_u: int, bit_g: int, bit_o: int) -> bool:
        try:
            st = p.stat()
        except OSError:
            return True  # missing: the tool reports ENOENT itself
        if st.st_uid == uid:
            return bool(st.st_mode & bit_u)
        if st.st_gid == gid:
            return bool(st.st_mode & bit_g)
        return bool(st.st_mode & bit_o)
    if not all(can(d, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH) for d in path.parents):
        return False
    return can(path, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def drop_foreign_refs(obj: object, uid: int) -> bool:
    """Replace, in place, every shared-memory reference in obj whose segment is not owned by
    uid; say whether there was one. An agent under agent_uid would otherwise have the kernel's
    managers (root) read, or unlink, a segment of root's that it saw in /dev/shm."""
    from aiosd.protocol import ShmRef
    found = False
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in list(items):
        if isinstance(value, ShmRef):
            try:
                mine = os.stat(value.path()).st_uid == uid
            except OSError:
                mine = True  # gone: resolving it fails on its own, and there is nothing to steal
            if not mine:
                obj[key] = None
                found = True
        elif isinstance(value, (dict, list)):
            found = drop_foreign_refs(value, uid) or found
    return found
