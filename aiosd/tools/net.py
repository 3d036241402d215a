"""HTTP for the network tools: urllib with a short timeout, every failure one EUNAVAIL
sentence (no network, no key, the service refused) instead of a hang or a traceback."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from aiosd.errors import AiosError
from aiosd.tools.registry import ToolContext

CONNECT_TIMEOUT_S = 5.0
MAX_BODY = 8 << 20


def need_env(service: str, *names: str) -> list[str]:
    """The API keys a service needs, or EUNAVAIL saying which variable is missing."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise AiosError("EUNAVAIL", f"{service} needs an API key: set {' and '.join(missing)} "
                                    f"in the daemon's environment")
    return [os.environ[n] for n in names]


def http_get(url: str, service: str, ctx: ToolContext, headers: dict | None = None) -> bytes:
    timeout = max(0.5, min(CONNECT_TIMEOUT_S, ctx.timeout))
    req = urllib.request.Request(url, headers={"User-Agent": "aiosd-tools/0.1", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode(errors="replace") if exc.fp else ""
        code = "EACCES" if exc.code in (401, 403) else "EUNAVAIL"
        raise AiosError(code, f"{service} answered HTTP {exc.code} {exc.reason}: {body.strip()[:200]}") from None
    except urllib.error.URLError as exc:
        raise AiosError("EUNAVAIL", f"{service} is unreachable (no network?): {exc.reason}") from None
    except TimeoutError:
        raise AiosError("EUNAVAIL", f"{service} did not answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise AiosError("EUNAVAIL", f"{service} is unreachable: {exc}") from None


def get_json(url: str, service: str, ctx: ToolContext, headers: dict | None = None) -> Any:
    raw = http_get(url, service, ctx, headers)
    try:
        return json.loads(raw)
    except ValueError:
        raise AiosError("EUNAVAIL", f"{service} answered something that is not JSON") from None
