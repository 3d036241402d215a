"""The syscall table: the spine of the system (xv6's syscalls[], in Python).

Each entry names the call, the manager that serves it, the privilege it needs, the
argument schema the kernel checks before routing, and which argument (if any) names
another agent whose resource the call touches (`target`, checked by the access rules
against `resource`). libaios, aios-ps's accounting and the docs are read off this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiosd.errors import AiosError
from aiosd.schema import Arg, validate

MiB = 1 << 20
MAX_PAYLOAD = 256 * MiB
AGENT_STATES = ("CREATED", "READY", "RUNNING", "WAITING", "SUSPENDED", "EXITED", "KILLED")
SIGNALS = ("TERM", "KILL", "INT", "HUP", "STOP", "CONT", "USR1", "USR2")


@dataclass(frozen=True)
class Syscall:
    name: str
    manager: str          # kernel | llm | memory | storage | tools
    privilege: str        # agent: any authenticated caller; root: the operator; internal: managers
    args: tuple[Arg, ...] = ()
    doc: str = ""
    target: str | None = None     # argument naming another agent
    resource: str | None = None   # what of the target is touched: agent, memory, storage, context
    group: str = ""

    def check(self, args: object) -> dict:
        return validate(args, self.args, self.name)


def _aid(required: bool = False) -> Arg:
    return Arg("aid", "int", required=required, min=0, max=2**31)


_MSGS = Arg("messages", "list", required=True, max_len=4096, doc="OpenAI-style chat messages")
_GEN = (
    Arg("max_tokens", "int", min=1, max=1 << 20),
    Arg("temperature", "float", min=0.0, max=10.0),
    Arg("top_p", "float", min=0.0, max=1.0),
    Arg("seed", "int", min=0, max=2**63 - 1),
    Arg("stop", "strlist", max_len=16),
    Arg("stream", "bool"),
)

TABLE: tuple[Syscall, ...] = (
    # agent: served by the kernel from its process table
    Syscall("get_aid", "kernel", "agent", (), "the caller's aid", group="agent"),
    Syscall("set_aid", "kernel", "root", (_aid(True),),
            "act as agent aid on this connection (gateways); root only", group="agent"),
    Syscall("get_status", "kernel", "agent", (_aid(),), "an agent's process-table row",
            target="aid", resource="agent:read", group="agent"),
    Syscall("set_status", "kernel", "agent",
            (_aid(True), Arg("status", "str", required=True, choices=("RUNNING", "SUSPENDED", "KILLED"))),
            "suspend, resume or kill by naming the wanted state", target="aid", resource="agent", group="agent"),
    Syscall("get_priority", "kernel", "agent", (_aid(),), "an agent's priority",
            target="aid", resource="agent:read", group="agent"),
    Syscall("set_priority", "kernel", "agent",
            (_aid(True), Arg("priority", "int", required=True, min=-20, max=20)),
            "lower is allowed to anyone on itself; raising or touching others needs root",
            target="aid", resource="agent", group="agent"),
    Syscall("suspend_agent", "kernel", "agent", (_aid(True),), "SIGSTOP and park its requests",
            target="aid", resource="agent", group="agent"),
    Syscall("resume_agent", "kernel", "agent", (_aid(True),), "SIGCONT and unpark",
            target="aid", resource="agent", group="agent"),
    Syscall("spawn_agent", "kernel", "agent", (
        Arg("argv", "list", required=True, max_len=1024),
        Arg("name", "str", max_len=64),
        Arg("priority", "int", min=-20, max=20),
        Arg("env", "dict", max_len=256),
        Arg("cwd", "str", max_len=4096),
        Arg("tools", "list", max_len=256, doc="tool allowlist; None: all"),
        Arg("memory_quota", "int", min=0),
        Arg("storage_quota", "int", min=0),
        Arg("context_strategy", "str", choices=("truncate", "summarize")),
    ), "start an agent as a child process; returns {aid, pid}", group="agent"),
    Syscall("attach_agent", "kernel", "root", (
        Arg("name", "str", required=True, max_len=64),
        Arg("priority", "int", min=-20, max=20),
        Arg("tools", "list", max_len=256, doc="tool allowlist; None: all"),
        Arg("manager", "str", max_len=64, doc="the supervised process carrying it (default: gateway)"),
    ), "an agent row with no process of its own, carried by a manager (the HTTP gateway's keys); "
       "returns its aid", group="agent"),
    Syscall("detach_agent", "kernel", "root", (_aid(True), Arg("exit_code", "int", min=-255, max=255)),
            "end an attached agent row (EXITED)", group="agent"),
    Syscall("kill_agent", "kernel", "agent", (_aid(True), Arg("signal", "str", choices=SIGNALS)),
            "send a signal (default TERM)", target="aid", resource="agent", group="agent"),
    Syscall("wait_agent", "kernel", "agent", (_aid(True), Arg("timeout", "float", min=0.0, max=86400.0)),
            "block until the agent exits; returns its row", target="aid", resource="agent:read",
            group="agent"),
    Syscall("list_agents", "kernel", "agent", (Arg("all", "bool"),), "process-table rows",
            group="agent"),
    Syscall("log_event", "kernel", "agent",
            (Arg("message", "str", required=True, max_len=64 * 1024), Arg("level", "str", max_len=16)),
            "append an agent event to its history and the audit log", group="agent"),
    Syscall("sys_status", "kernel", "agent", (), "the managers' supervisor states", group="system"),
    Syscall("sys_set", "kernel", "root", (Arg("settings", "dict", required=True, max_len=64),),
            "change tunables at run time (scheduler, quantum, ...)", group="system"),
    Syscall("sys_stop", "kernel", "root", (), "graceful shutdown of the daemon", group="system"),
    Syscall("sys_metrics", "kernel", "agent", (), "kernel counters", group="system"),

    # llm and context: served by the llm worker
    Syscall("llm_chat", "llm", "agent", (
        _MSGS, *_GEN,
        Arg("tools", "list", max_len=128),
        Arg("context", "bool", doc="prepend and extend the agent's kept context"),
    ), "generate a reply", group="llm"),
    Syscall("gen_snapshot", "llm", "agent", (Arg("request", "int", min=0),),
            "pause an in-flight generation of the caller and keep its state", group="context"),
    Syscall("gen_restore", "llm", "agent", (Arg("snapshot", "str", required=True, max_len=64),
                                            Arg("stream", "bool")),
            "resume a snapshotted generation to its end", group="context"),
    Syscall("get_context", "llm", "agent", (_aid(),), "the agent's kept context",
            target="aid", resource="context:read", group="context"),
    Syscall("set_context", "llm", "agent", (_MSGS,), "replace the agent's kept context", group="context"),
    Syscall("clr_context", "llm", "agent", (), "clear the agent's kept context", group="context"),
    Syscall("exp_context", "llm", "agent", (Arg("size", "int", required=True, min=1, max=1 << 22),),
            "grow the agent's context window", group="context"),

    # memory
    Syscall("mem_alloc", "memory", "agent", (Arg("size", "int", required=True, min=0, max=1 << 40),),
            "set the caller's memory quota in bytes", group="memory"),
    Syscall("mem_write", "memory", "agent", (
        Arg("content", "data", required=True, max_len=MAX_PAYLOAD),
        Arg("key", "str", max_len=1024),
        Arg("role", "str", max_len=32),
        Arg("metadata", "dict", max_len=256),
    ), "append a record (or set a key); returns the record id", group="memory"),
    Syscall("mem_read", "memory", "agent", (
        Arg("key", "str", max_len=1024), Arg("last", "int", min=0, max=1 << 20),
        Arg("start", "int", min=0), Arg("end", "int", min=0), _aid(),
    ), "records by key, range or last n", target="aid", resource="memory:read", group="memory"),
    Syscall("mem_clear", "memory", "agent", (
        Arg("key", "str", max_len=1024), Arg("record", "int", min=0), Arg("all", "bool"), _aid(),
    ), "clear a record, a key or everything", target="aid", resource="memory", group="memory"),
    Syscall("mem_search", "memory", "agent", (
        Arg("query", "str", required=True, max_len=64 * 1024), Arg("k", "int", min=1, max=1000), _aid(),
    ), "the k most similar records", target="aid", resource="memory:read", group="memory"),
    Syscall("mem_persist", "memory", "agent", (Arg("on_exit", "bool", required=True),),
            "keep the caller's memory in storage when it exits", group="memory"),
    Syscall("mem_restore", "memory", "agent", (),
            "replace the caller's memory with what the last agent of its name persisted", group="memory"),

    # storage
    Syscall("sto_alloc", "storage", "agent", (Arg("size", "int", required=True, min=0, max=1 << 44),),
            "set the caller's storage quota in bytes", group="storage"),
    Syscall("sto_write", "storage", "agent", (
        Arg("path", "str", required=True, max_len=4096),
        Arg("data", "data", required=True, max_len=MAX_PAYLOAD),
        Arg("owner", "str", max_len=64),
    ), "durable write; returns the version", target="owner", resource="storage", group="storage"),
    Syscall("sto_read", "storage", "agent", (
        Arg("path", "str", required=True, max_len=4096), Arg("version", "int", min=1),
        Arg("owner", "str", max_len=64),
    ), "read a file (a version of it)", target="owner", resource="storage:read", group="storage"),
    Syscall("sto_delete", "storage", "agent", (
        Arg("path", "str", required=True, max_len=4096), Arg("owner", "str", max_len=64),
    ), "delete a file and its versions", target="owner", resource="storage", group="storage"),
    Syscall("sto_list", "storage", "agent", (
        Arg("prefix", "str", max_len=4096), Arg("owner", "str", max_len=64),
    ), "list paths under a prefix", target="owner", resource="storage:read", group="storage"),
    Syscall("sto_retrieve", "storage", "agent", (
        Arg("query", "str", required=True, max_len=64 * 1024), Arg("k", "int", min=1, max=1000),
        Arg("owner", "str", max_len=64),
    ), "retrieval over the stored texts", target="owner", resource="storage:read", group="storage"),
    Syscall("sto_versions", "storage", "agent", (
        Arg("path", "str", required=True, max_len=4096), Arg("owner", "str", max_len=64),
    ), "the versions kept of a file", target="owner", resource="storage:read", group="storage"),
    Syscall("sto_usage", "storage", "agent", (Arg("owner", "str", max_len=64), Arg("all", "bool")),
            "bytes kept, quota and files of the caller's namespace (all: every one, root only)",
            target="owner", resource="storage:read", group="storage"),
    Syscall("snapshot_create", "storage", "agent", (Arg("label", "str", max_len=256),),
            "snapshot the caller's memory, context and files", group="storage"),
    Syscall("snapshot_restore", "storage", "agent", (Arg("snapshot", "str", required=True, max_len=64),),
            "roll the caller back to a snapshot", group="storage"),
    Syscall("snapshot_list", "storage", "agent", (Arg("owner", "str", max_len=64),),
            "the caller's agent snapshots (or a granting owner's), oldest first, with their sizes",
            target="owner", resource="storage:read", group="storage"),
    Syscall("snapshot_delete", "storage", "agent", (Arg("snapshot", "str", required=True, max_len=64),),
            "delete one of the caller's agent snapshots; its bytes leave the storage quota", group="storage"),
    Syscall("audit_query", "storage", "agent", (
        _aid(), Arg("since", "float"), Arg("until", "float"), Arg("call", "str", max_len=64),
        Arg("limit", "int", min=1, max=100000), Arg("name", "str", max_len=64),
    ), "the audit log of an agent", target="aid", resource="audit:read", group="access"),

    # tools
    Syscall("tool_list", "tools", "agent", (), "OpenAI function schemas the caller may use", group="tools"),
    Syscall("tool_call", "tools", "agent", (
        Arg("name", "str", required=True, max_len=128), Arg("args", "dict", max_len=1024),
        Arg("timeout", "float", min=0.0, max=3600.0),
    ), "run a tool in a sandboxed process", group="tools"),

    # access: served by the kernel (its access rules and key store)
    Syscall("grant", "kernel", "agent", (
        Arg("grantee", "any", required=True), Arg("resource", "str", required=True, max_len=64),
        Arg("rights", "str", max_len=8),
    ), "let an agent (aid), a name or a group use one of the caller's resources", group="access"),
    Syscall("revoke", "kernel", "agent", (
        Arg("grantee", "any", required=True), Arg("resource", "str", required=True, max_len=64),
        Arg("rights", "str", max_len=8),
    ), "take a grant back", group="access"),
    Syscall("encrypt_data", "kernel", "agent", (Arg("data", "data", required=True, max_len=MAX_PAYLOAD),),
            "AES-GCM with the caller's key, which never leaves the kernel", group="access"),
    Syscall("decrypt_data", "kernel", "agent", (
        Arg("blob", "bytes", required=True, max_len=MAX_PAYLOAD), Arg("owner", "str", max_len=64),
    ), "decrypt what the caller (or a granting owner) encrypted", group="access"),

    # internal: manager to manager, through the kernel
    Syscall("_sto_put", "storage", "internal", (
        Arg("db", "str", required=True), Arg("key", "bytes", required=True), Arg("value", "any"),
    ), "raw put into a storage sub-database", group="internal"),
    Syscall("_sto_get", "storage", "internal", (
        Arg("db", "str", required=True), Arg("key", "bytes", required=True), Arg("delete", "bool"),
    ), "raw get from a storage sub-database", group="internal"),
    Syscall("_sto_drop", "storage", "internal", (
        Arg("db", "str", required=True), Arg("prefix", "bytes", required=True, max_len=256),
        Arg("keep", "int", min=0, max=1 << 20),
    ), "delete every key under a prefix of a storage sub-database but the `keep` greatest",
        group="internal"),
    Syscall("_sto_last", "storage", "internal", (
        Arg("db", "str", required=True), Arg("prefix", "bytes", required=True, max_len=256),
    ), "the greatest key under a prefix of a storage sub-database, and its value", group="internal"),
    Syscall("_audit", "storage", "internal", (Arg("records", "list", required=True),),
            "append audit records", group="internal"),
    Syscall("_proc_save", "storage", "internal", (Arg("row", "dict", required=True),),
            "persist a process-table row", group="internal"),
    Syscall("_mem_dump", "memory", "internal", (_aid(True),),
            "an agent's memory, for agent snapshots", group="internal"),
    Syscall("_mem_load", "memory", "internal", (_aid(True), Arg("records", "list", required=True)),
            "replace an agent's memory, for rollbacks", group="internal"),
    Syscall("_ctx_dump", "llm", "internal", (_aid(True),), "an agent's context", group="internal"),
    Syscall("_ctx_load", "llm", "internal", (_aid(True), Arg("context", "any")),
            "replace an agent's context", group="internal"),
)


class SyscallTable:
    def __init__(self, entries: tuple[Syscall, ...] = TABLE):
        self.entries = {s.name: s for s in entries}

    def lookup(self, name: object) -> Syscall:
        if not isinstance(name, str) or len(name) > 64:
            raise AiosError("EPROTO", "'call' must be a short string")
        sc = self.entries.get(name)
        if sc is None:
            raise AiosError("ENOSYS", f"no syscall named '{name}'")
        return sc

    def by_manager(self, manager: str) -> list[Syscall]:
        return [s for s in self.entries.values() if s.manager == manager]

    def public(self) -> list[Syscall]:
        return [s for s in self.entries.values() if s.privilege != "internal"]

    def __iter__(self):
        return iter(self.entries.values())

    def __contains__(self, name: str) -> bool:
        return name in self.entries


SYSCALLS = SyscallTable()
