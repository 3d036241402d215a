"""Table 3 of the AIOS paper in Python names: a thin, documented layer over syscalls.

Every function takes `client=` to act through a given connection (a test's agent client,
a supervisor acting as root); by default it uses the process's own connection.

The life of an agent, from the outside (as root or a parent agent):

    aid = register_agent(["python", "-m", "agents.math", "what is 2+3?"], name="math")
    queue_for_execution(aid)            # it runs; its llm requests enter the scheduler
    row = terminate_agent(aid)          # or wait for it: calls.wait_agent(aid)

and from the inside (in the agent's own process):

    initialize_agent(memory_quota=1 << 20)
    steps = generate_plan("book a trip to Paris")
    log_event("plan has %d steps" % len(steps))
"""

from __future__ import annotations

import re
import time
from typing import Any

from libaios import calls
from libaios.errors import AiosError, PermissionDenied


def _sys(client: Any) -> Any:
    return calls if client is None else calls.bind(client)


def initialize_agent(*, memory_quota: int | None = None, storage_quota: int | None = None,
                     context: list | None = None, client: Any = None) -> None:
    """Set up the caller's environment: its memory and storage quotas and its kept context.

    >>> initialize_agent(memory_quota=1 << 20, context=[{"role": "system", "content": "Be brief."}])
    """
    s = _sys(client)
    _apply_config(s, memory_quota, storage_quota, context)
    s.log_event("initialized", level="info")


def register_agent(argv: list[str], *, name: str | None = None, priority: int | None = None,
                   tools: list[str] | None = None, memory_quota: int | None = None,
                   storage_quota: int | None = None, context_strategy: str | None = None,
                   env: dict | None = None, client: Any = None) -> int:
    """Register a new agent: it gets an aid, a token and its permissions (tool allowlist,
    quotas, priority), and is held stopped until `queue_for_execution`. Returns the aid.

    The process is started and stopped at once (SIGSTOP), before it can make a syscall, so
    the aid exists (aios-ps shows it SUSPENDED) while it waits for its turn.

    >>> aid = register_agent(["python", "-m", "agents.math", "2+3?"], name="math", tools=["wolframalpha"])
    """
    s = _sys(client)
    row = s.spawn_agent(argv, name=name, priority=priority, env=env, tools=tools, memory_quota=memory_quota,
                        storage_quota=storage_quota, context_strategy=context_strategy)
    s.suspend_agent(row["aid"])
    return int(row["aid"])


def queue_for_execution(aid: int, *, client: Any = None) -> None:
    """Let a registered agent run: it continues and its requests queue for the scheduler.

    >>> queue_for_execution(aid)
    """
    _sys(client).resume_agent(aid)


def generate_plan(task: str, *, max_steps: int = 5, max_tokens: int = 96, client: Any = None) -> list[str]:
    """Ask the model for a numbered plan of `task`; returns the steps as a list of strings.

    >>> generate_plan("make tea", max_steps=3)
    ['Boil water', 'Steep the tea', 'Pour']
    """
    reply = _sys(client).llm_chat(plan_messages(task, max_steps), max_tokens=max_tokens, temperature=0.0)
    return parse_plan(reply["text"], max_steps)


def plan_messages(task: str, max_steps: int) -> list[dict]:
    """The request generate_plan sends (the Agent class sends the same one itself, to time it)."""
    return [
        {"role": "system", "content": "You write short numbered plans. One step per line, like '1. ...'."},
        {"role": "user", "content": f"Write a numbered plan of at most {max_steps} steps for: {task}"},
    ]


_STEP = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):-]\s*(.+?)\s*$", re.IGNORECASE)


def parse_plan(text: str, max_steps: int = 5) -> list[str]:
    """Numbered lines of a model's reply; bullets or plain lines if it numbered nothing."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    steps = [m.group(1) for m in map(_STEP.match, lines) if m]
    if not steps:
        steps = [ln.lstrip("-*• ").strip() for ln in lines]
    steps = [s for s in steps if s]
    return steps[:max_steps] or ([text.strip()] if text.strip() else [])


def terminate_agent(aid: int, *, timeout: float = 5.0, client: Any = None) -> dict:
    """Stop an agent with cleanup: SIGTERM, then SIGKILL if it has not exited in `timeout`
    seconds. Returns its final process-table row (exit code, runtime, counters).

    >>> terminate_agent(aid)["status"]
    'KILLED'
    """
    s = _sys(client)
    try:
        s.resume_agent(aid)  # a stopped process cannot act on SIGTERM
    except AiosError:  # not suspended, or already gone: TERM decides
        pass
    try:
        s.kill_agent(aid, "TERM")
    except AiosError as exc:
        if exc.code != "ESRCH":
            raise
    try:
        return s.wait_agent(aid, timeout=timeout)
    except AiosError as exc:
        if exc.code != "ETIMEDOUT":
            raise
    s.kill_agent(aid, "KILL")
    return s.wait_agent(aid, timeout=timeout)


def create_agent_snapshot(label: str | None = None, *, client: Any = None) -> Any:
    """Snapshot the caller's memory, context and files; returns the snapshot's id.

    >>> snap = create_agent_snapshot("before-edit")
    """
    out = _sys(client).snapshot_create(label)
    return out.get("snapshot", out) if isinstance(out, dict) else out


def rollback_agent_state(snapshot: Any, *, client: Any = None) -> None:
    """Roll the caller's memory, context and files back to a snapshot.

    >>> rollback_agent_state(snap)
    """
    sid = snapshot.get("snapshot") if isinstance(snapshot, dict) else snapshot
    _sys(client).snapshot_restore(str(sid))


def update_agent_config(aid: int | None = None, *, priority: int | None = None,
                        memory_quota: int | None = None, storage_quota: int | None = None,
                        context: list | None = None, client: Any = None) -> bool:
    """Change an agent's settings. Priority works on any agent you may manage (raising it
    needs root); quotas and context apply to the caller itself. Returns True.

    >>> update_agent_config(priority=5)
    True
    """
    s = _sys(client)
    if priority is not None:
        s.set_priority(aid if aid is not None else s.get_aid(), priority)
    _apply_config(s, memory_quota, storage_quota, context)
    return True


def authenticate_agent(aid: int, token: str, *, home: str | None = None) -> bool:
    """Check an agent's credentials against the running daemon: True when a connection
    made with them is accepted as that agent, False when the kernel refuses it.

    >>> authenticate_agent(int(os.environ["AIOS_AID"]), os.environ["AIOS_TOKEN"])
    True
    """
    from libaios.client import Client
    c = Client(home, aid=aid, token=token, timeout=10.0)
    try:
        got = c.syscall("get_aid")
        return int(got.get("aid", -1) if isinstance(got, dict) else got) == aid
    except PermissionDenied:
        return False
    finally:
        c.close()


def monitor_resource_usage(aid: int | None = None, *, client: Any = None) -> dict:
    """An agent's usage: CPU seconds, RSS, syscalls, tokens in/out, LLM queue wait, and the
    daemon's counters under "system".

    >>> monitor_resource_usage()["tokens_out"]
    """
    s = _sys(client)
    row = dict(s.get_status(aid))
    try:
        row["system"] = s.sys_metrics()
    except AiosError:
        row["system"] = {}
    return row


def log_event(message: str, level: str = "info", *, client: Any = None) -> None:
    """Append an event to the caller's history and the audit log (aios-logs shows it).

    >>> log_event("fetched 3 restaurants")
    """
    _sys(client).log_event(message, level=level)


def list_active_agents(*, client: Any = None) -> list[dict]:
    """Process-table rows of the agents alive now.

    >>> [r["name"] for r in list_active_agents()]
    """
    return list(_sys(client).list_agents(False))


def query_agent_history(aid: int | None = None, *, call: str | None = None, since: float | None = None,
                        limit: int = 100, client: Any = None) -> list[dict]:
    """The audit records of an agent (default: the caller): time, call, result, latency.

    >>> [r["call"] for r in query_agent_history(call="llm_chat")]
    """
    return list(_sys(client).audit_query(aid, call=call, since=since, limit=limit))


def encrypt_data(data: bytes | str, *, client: Any = None) -> bytes:
    """Encrypt with the caller's key (AES-GCM; the key stays in the kernel).

    >>> blob = encrypt_data(b"card 4111")
    """
    return _sys(client).encrypt_data(data)


def decrypt_data(blob: bytes, *, owner: str | None = None, client: Any = None) -> bytes:
    """Decrypt what the caller (or an owner who granted it) encrypted.

    >>> decrypt_data(blob)
    b'card 4111'
    """
    return _sys(client).decrypt_data(blob, owner=owner)


def wait_for(aid: int, timeout: float | None = None, *, client: Any = None) -> dict:
    """Block until the agent exits; its final row (a convenience beside Table 3)."""
    t0 = time.monotonic()
    row = _sys(client).wait_agent(aid, timeout=timeout)
    row.setdefault("waited_s", time.monotonic() - t0)
    return row


__all__ = ["initialize_agent", "register_agent", "queue_for_execution", "generate_plan", "parse_plan",
           "terminate_agent", "create_agent_snapshot", "rollback_agent_state", "update_agent_config",
           "authenticate_agent", "monitor_resource_usage", "log_event", "list_active_agents",
           "query_agent_history", "encrypt_data", "decrypt_data", "wait_for"]


def _apply_config(s: Any, memory_quota: int | None, storage_quota: int | None, context: list | None) -> None:
    """What initialize_agent and update_agent_config both set: quotas and the kept context."""
    if memory_quota is not None:
        s.mem_alloc(memory_quota)
    if storage_quota is not None:
        s.sto_alloc(storage_quota)
    if context is not None:
        s.set_context(context)
