"""Errors raised by libaios: AiosError with `.code` (the errno name) and `.message`."""

from __future__ import annotations

from aiosd.errors import AiosError


class PermissionDenied(AiosError):
    """EACCES / EPERM."""


class NotFound(AiosError):
    """ENOENT / ESRCH."""


class InvalidArgument(AiosError):
    """EINVAL (and E2BIG)."""


class Unavailable(AiosError):
    """EUNAVAIL: a resource (network, model, daemon) is not reachable."""


class TimedOut(AiosError):
    """ETIMEDOUT."""


class Busy(AiosError):
    """EBUSY: over a rate or queue limit; try again later."""


_BY_CODE = {
    "EACCES": PermissionDenied, "EPERM": PermissionDenied,
    "ENOENT": NotFound, "ESRCH": NotFound,
    "EINVAL": InvalidArgument, "E2BIG": InvalidArgument,
    "EUNAVAIL": Unavailable, "ETIMEDOUT": TimedOut, "EBUSY": Busy,
}


def error_for(code: str, message: str) -> AiosError:
    return _BY_CODE.get(code, AiosError)(code, message)
