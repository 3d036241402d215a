"""Errno-named errors: the one error shape on the wire, in the kernel, managers and libaios."""

from __future__ import annotations

CODES = {
    "EINVAL": "invalid argument",
    "EPROTO": "malformed message",
    "ENOSYS": "unknown call",
    "EACCES": "access denied",
    "EPERM": "operation not permitted",
    "ENOENT": "no such entry",
    "ESRCH": "no such agent",
    "ENOMEM": "memory quota exceeded",
    "ENOSPC": "storage quota exceeded",
    "ETIMEDOUT": "timed out",
    "EBUSY": "busy, try again",
    "EIO": "manager failed",
    "EUNAVAIL": "resource unavailable",
    "E2BIG": "argument too large",
    "EEXIST": "already exists",
}


class AiosError(Exception):
    """An error with an errno name (`code`) and one sentence (`message`)."""

    def __init__(self, code: str, message: str = ""):
        if code not in CODES:
            code = "EIO"
        super().__init__(f"{code}: {message or CODES[code]}")
        self.code = code
        self.message = message or CODES[code]

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_wire(cls, err: object) -> AiosError:
        if isinstance(err, dict):
            return cls(str(err.get("code", "EIO")), str(err.get("message", "")))
        return cls("EIO", str(err))
