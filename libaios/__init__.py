"""libaios: what agents import to talk to aiosd.

    import libaios
    libaios.llm_chat([{"role": "user", "content": "hi"}])

Connection details come from the environment the kernel gives every agent
(AIOS_HOME, AIOS_AID, AIOS_TOKEN); outside an agent it connects as root.
"""

from libaios.calls import *  # noqa: F403  (one function per public syscall)
from libaios.calls import __all__ as _calls_all
from libaios.client import Client, Stream, connect, syscall
from libaios.errors import (
    AiosError,
    Busy,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TimedOut,
    Unavailable,
)

__all__ = [
    "AiosError", "Busy", "Client", "InvalidArgument", "NotFound", "PermissionDenied", "Stream",
    "TimedOut", "Unavailable", "connect", "syscall",
]
__all__ += _calls_all  # noqa: PLE0605  (the wrappers are listed in libaios.calls)
