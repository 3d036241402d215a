"""API keys of the gateway: AIOS_HOME/data/keys.json, hashed, mode 0600, atomic writes.

A JSON file rather than LMDB: keys must be created and revoked whether or not the daemon
runs, and the storage manager is the only LMDB writer while it does. The file holds only
sha256 digests of the keys (a key is 256 random bits, so a plain digest is enough; no
slow KDF is needed against guessing), so reading it reveals no key. Writers take an
flock beside it and replace the file with rename, so a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from aiosd.errors import AiosError

KEY_PREFIX = "aios-"
SHOWN = 12  # characters of a key that `aios-key list` shows and `revoke` accepts


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= 64 or \
            not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AiosError("EINVAL", "a key name is letters, digits, '-', '_' and '.', at most 64")
    return name


@dataclass
class KeyRecord:
    name: str
    prefix: str
    sha256: str
    priority: int = 0
    tools: list | None = None
    created_at: float = 0.0
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "sha256"}


class KeyStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._stamp: tuple | None = None
        self._by_hash: dict[str, KeyRecord] = {}

    @classmethod
    def for_home(cls, home: str | os.PathLike) -> KeyStore:
        return cls(Path(home) / "data" / "keys.json")

    # ---- reading ------------------------------------------------------------------------
    def load(self) -> list[KeyRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise AiosError("EIO", f"cannot read {self.path}: {exc}") from None
        fields = KeyRecord.__dataclass_fields__
        return [KeyRecord(**{k: v for k, v in r.items() if k in fields}) for r in raw.get("keys", [])]

    def lookup(self, key: str) -> KeyRecord | None:
        """The active record of a presented key (None: unknown or revoked). Re-reads the file
        only when it changed, so the gateway sees a revocation on the next request."""
        self.refresh()
        rec = self._by_hash.get(digest(key))
        return rec if rec is not None and rec.active else None

    def refresh(self) -> bool:
        """Reload if the file changed; returns whether it did."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return False
        self._by_hash = {r.sha256: r for r in self.load()}
        self._stamp = stamp
        return True

    def active_hashes(self) -> set[str]:
        self.refresh()
        return {h for h, r in self._by_hash.items() if r.active}

    # ---- writing ------------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _save(self, records: list[KeyRecord]) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": 1, "keys": [asdict(r) for r in records]}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def create(self, name: str, priority: int = 0, tools: list | None = None) -> tuple[str, KeyRecord]:
        """Issue a key; returns (the key, shown once, and its record)."""
        check_name(name)
        if not isinstance(priority, int) or not -20 <= priority <= 20:
            raise AiosError("EINVAL", "priority is an integer from -20 to 20")
        if tools is not None and not all(isinstance(t, str) and t for t in tools):
            raise AiosError("EINVAL", "tools is a list of tool names")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        rec = KeyRecord(name, key[:SHOWN], digest(key), priority, list(tools) if tools is not None else None,
                        time.time())
        with self._locked():
            records = self.load()
            if any(r.name == name and r.active for r in records):
                raise AiosError("EEXIST", f"an active key named '{name}' exists; revoke it first")
            self._save(records + [rec])
        return key, rec

    def revoke(self, which: str) -> list[KeyRecord]:
        """Revoke the active keys whose name is `which` or whose key starts with it."""
        if not which:
            raise AiosError("EINVAL", "name a key by its name or its prefix")
        with self._locked():
            records = self.load()
            hit = [r for r in records if r.active and r.name == which]
            if not hit and which.startswith(KEY_PREFIX) and len(which) >= 8:
                # a prefix (as `list` shows it) or the whole key
                hit = [r for r in records if r.active and
                       (r.prefix.startswith(which) or r.sha256 == digest(which))]
                if len(hit) > 1:
                    raise AiosError("EINVAL", f"'{which}' is the prefix of {len(hit)} keys; give more of it")
            if not hit:
                raise AiosError("ENOENT", f"no active key named or starting with '{which}'")
            now = time.time()
            for r in hit:
                r.revoked_at = now
            self._save(records)
        return hit
