"""Names inside a storage namespace: what a path may be, and the LMDB keys made of them.

A namespace belongs to an agent's name; a path is relative inside it. Anything that could
reach outside (`..`, an absolute path, NUL bytes, an empty or `.` component) is EINVAL,
checked here once for the storage manager and the kernel's reads. So is a path too long to be
a key: LMDB keys hold at most MAX_KEY bytes, and a version's key is the namespace, the path
and an 11-byte suffix, so a namespace's name and a path together hold MAX_FILE_KEY - 1 bytes.
"""

from __future__ import annotations

from aiosd.errors import AiosError

MAX_KEY = 511  # LMDB's MDB_MAXKEYSIZE as py-lmdb builds it; longer keys are an lmdb error
SEP = b"\0"
MAX_FILE_KEY = MAX_KEY - len(SEP) - 10  # room for a version's suffix (vkey)
MAX_PATH = MAX_FILE_KEY - 2  # with the shortest namespace; fkey checks the real sum


def check_path(path: object, what: str = "path", prefix: bool = False) -> str:
    """A relative name inside a namespace; anything that could escape it is EINVAL."""
    if not isinstance(path, str):
        raise AiosError("EINVAL", f"{what} must be a string")
    if not path and not prefix:
        raise AiosError("EINVAL", f"{what} must not be empty")
    if len(path.encode()) > MAX_PATH:
        raise AiosError("EINVAL", f"{what} is longer than {MAX_PATH} bytes")
    if "\0" in path:
        raise AiosError("EINVAL", f"{what} must not contain NUL bytes")
    if path.startswith("/") or path.startswith("\\"):
        raise AiosError("EINVAL", f"{what} '{path}' is absolute; paths are relative to the namespace")
    parts = path.replace("\\", "/").split("/")
    if prefix and parts and parts[-1] == "":
        parts = parts[:-1]  # "notes/" lists a folder
    for part in parts:
        if part == "..":
            raise AiosError("EINVAL", f"{what} '{path}' has a '..' component")
        if part in ("", ".") and not (prefix and not path):
            raise AiosError("EINVAL", f"{what} '{path}' has an empty or '.' component")
    return path


def check_ns(ns: object) -> str:
    if not isinstance(ns, str) or not ns or "\0" in ns or len(ns) > 256:
        raise AiosError("EINVAL", "a storage namespace is a short non-empty name")
    return ns


def fkey(ns: str, path: str) -> bytes:
    key = ns.encode() + SEP + path.encode()
    if len(key) > MAX_FILE_KEY:
        room = MAX_FILE_KEY - len(ns.encode()) - len(SEP)
        raise AiosError("EINVAL", f"path '{path[:40]}...' is too long: in namespace '{ns}' a path holds at "
                                  f"most {room} bytes")
    return key


def vkey(ns: str, path: str, version: int) -> bytes:
    return version_key(fkey(ns, path), version)


def version_key(file_key: bytes, version: int) -> bytes:
    """A version's key from its file's key (fkey), for a caller that has the latter already."""
    return file_key + SEP + b"%010d" % version
