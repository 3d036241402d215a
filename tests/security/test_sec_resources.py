"""Another agent's things: memory, storage, snapshots, keys, its process. Every attempt is
refused (EACCES / EPERM / ENOENT) and shows in the audit log; the owner's data is intact."""

from __future__ import annotations

import sqlite3
import sys

import pytest
from secd import audit_of, code_of, sec, token_agent

__all__ = ["sec"]


@pytest.fixture(scope="module")
def pair(sec, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pair")
    a, _, ca = token_agent(sec, "victim", tmp)
    b, _, cb = token_agent(sec, "attacker", tmp)
    ca.syscall("mem_write", {"content": "victim's private note", "key": "k"})
    ca.syscall("sto_write", {"path": "notes/secret.txt", "data": b"victim's file"})
    return a, ca, b, cb


MEMORY_ATTACKS = [
    ("mem_read", {"last": 10}),
    ("mem_read", {"key": "k"}),
    ("mem_search", {"query": "note"}),
    ("mem_clear", {"all": True}),
    ("mem_clear", {"key": "k"}),
    ("get_context", {}),
]
STORAGE_ATTACKS = [
    ("sto_read", {"path": "notes/secret.txt"}),
    ("sto_list", {}),
    ("sto_versions", {"path": "notes/secret.txt"}),
    ("sto_write", {"path": "notes/secret.txt", "data": b"overwritten"}),
    ("sto_write", {"path": "planted.txt", "data": b"x"}),
    ("sto_delete", {"path": "notes/secret.txt"}),
    ("sto_retrieve", {"query": "secret"}),
]


def test_memory_of_another_agent_is_eacces_and_audited(sec, pair):
    a, ca, b, cb = pair
    for call, args in MEMORY_ATTACKS:
        code = code_of(lambda c=call, x=args: cb.syscall(c, {**x, "aid": a}))
        assert code == "EACCES", (call, code)
    recs = ca.syscall("mem_read", {"key": "k"})
    assert "victim's private note" in str(recs)
    want = {c for c, _ in MEMORY_ATTACKS}
    recs = audit_of(sec, b, until=lambda rs: want <= {r["call"] for r in rs if r["code"] == "EACCES"})
    assert want <= {r["call"] for r in recs if r["code"] == "EACCES"}


def test_storage_of_another_agent_is_eacces_and_audited(sec, pair):
    a, ca, b, cb = pair
    for call, args in STORAGE_ATTACKS:
        code = code_of(lambda c=call, x=args: cb.syscall(c, {**x, "owner": "victim"}))
        assert code == "EACCES", (call, code)
    assert ca.syscall("sto_read", {"path": "notes/secret.txt"})["data"] == b"victim's file"
    assert ca.syscall("sto_list", {})["paths"] == ["notes/secret.txt"]
    want = {c for c, _ in STORAGE_ATTACKS}
    recs = audit_of(sec, b, until=lambda rs: want <= {r["call"] for r in rs if r["code"] == "EACCES"})
    assert want <= {r["call"] for r in recs if r["code"] == "EACCES"}
    # the same from the operator's side: aios-logs --audit shows the refusals
    out = sec.run_cli("aios-logs", "--audit", "--aid", str(b), "--since", "10m")
    assert out.returncode == 0 and "sto_read EACCES" in out.stdout, out.stdout[-2000:]


def test_a_grant_opens_exactly_what_it_says_and_revoke_closes_it(sec, pair):
    a, ca, b, cb = pair
    ca.syscall("grant", {"grantee": b, "resource": "memory", "rights": "r"})
    assert "victim's private note" in str(cb.syscall("mem_read", {"aid": a, "key": "k"}))
    assert code_of(lambda: cb.syscall("mem_clear", {"aid": a, "all": True})) == "EACCES"   # r, not w
    assert code_of(lambda: cb.syscall("sto_read", {"path": "notes/secret.txt", "owner": "victim"})) == "EACCES"
    # the grantee cannot pass it on, nor grant itself more
    cb.syscall("grant", {"grantee": "*", "resource": "memory", "rights": "rw"})
    assert code_of(lambda: cb.syscall("mem_clear", {"aid": a, "all": True})) == "EACCES"
    assert ca.syscall("revoke", {"grantee": b, "resource": "memory"}) == 1
    assert code_of(lambda: cb.syscall("mem_read", {"aid": a})) == "EACCES"
    recs = audit_of(sec, a, until=lambda rs: {"grant", "revoke"} <= {r["call"] for r in rs})
    notes = [r.get("note", "") for r in recs if r["call"] in ("grant", "revoke")]
    assert any("memory" in n and str(b) in n for n in notes), notes


@pytest.mark.parametrize("path", ["../victim/notes/secret.txt", "/etc/passwd", "a/../../victim/x", "x\0y",
                                  "..", "./x", "notes//secret.txt", "\\..\\victim", ""])
def test_storage_path_traversal_is_einval(sec, pair, path):
    a, ca, b, cb = pair
    assert code_of(lambda: cb.syscall("sto_read", {"path": path})) == "EINVAL"
    assert code_of(lambda: cb.syscall("sto_write", {"path": path, "data": b"x"})) == "EINVAL"
    assert code_of(lambda: cb.syscall("sto_delete", {"path": path})) == "EINVAL"
    assert code_of(lambda: cb.syscall("sto_list", {"prefix": path})) in ("EINVAL", "OK")
    assert ca.syscall("sto_read", {"path": "notes/secret.txt"})["data"] == b"victim's file"


def test_another_agents_snapshot_cannot_be_restored(sec, pair):
    a, ca, b, cb = pair
    snap = ca.syscall("snapshot_create", {"label": "before"})["snapshot"]
    cb.syscall("sto_write", {"path": "mine.txt", "data": b"attacker's"})
    assert code_of(lambda: cb.syscall("snapshot_restore", {"snapshot": snap})) in ("ENOENT", "EACCES")
    assert cb.syscall("sto_list", {})["paths"] == ["mine.txt"]     # nothing of A's came over
    assert ca.syscall("sto_read", {"path": "notes/secret.txt"})["data"] == b"victim's file"
    assert code_of(lambda: cb.syscall("snapshot_restore", {"snapshot": "../" + snap})) in ("ENOENT", "EINVAL")


def test_priority_and_control_need_root(sec, pair):
    a, ca, b, cb = pair
    assert code_of(lambda: cb.syscall("set_priority", {"aid": b, "priority": 5})) == "EPERM"
    assert code_of(lambda: cb.syscall("set_priority", {"aid": a, "priority": -5})) == "EPERM"
    for call, args in (("suspend_agent", {}), ("resume_agent", {}), ("kill_agent", {"signal": "KILL"}),
                       ("set_status", {"status": "SUSPENDED"}), ("set_status", {"status": "KILLED"})):
        assert code_of(lambda c=call, x=args: cb.syscall(c, {**x, "aid": a})) == "EPERM", call
    assert code_of(lambda: cb.syscall("set_aid", {"aid": a})) == "EPERM"
    assert code_of(lambda: cb.syscall("sys_set", {"settings": {"syscall_rate": 1e9}})) == "EPERM"
    assert code_of(lambda: cb.syscall("sys_stop")) == "EPERM"
    assert ca.syscall("get_status")["status"] in ("RUNNING", "READY", "WAITING")
    assert sec.root.syscall("get_priority", {"aid": a}) == 0
    want = {"set_priority", "suspend_agent", "kill_agent", "sys_stop"}
    recs = audit_of(sec, b, until=lambda rs: want <= {r["call"] for r in rs if r["code"] == "EPERM"})
    assert want <= {r["call"] for r in recs if r["code"] == "EPERM"}


def test_quota_cannot_be_lifted_by_its_holder(sec, tmp_path):
    _, _, c = token_agent(sec, "greedy", tmp_path, memory_quota=1 << 20, storage_quota=1 << 20)
    assert code_of(lambda: c.syscall("mem_alloc", {"size": 1 << 30})) == "ENOMEM"
    assert code_of(lambda: c.syscall("sto_alloc", {"size": 1 << 40})) == "ENOSPC"
    assert code_of(lambda: c.syscall("sto_write", {"path": "big", "data": b"x" * (2 << 20)})) in ("ENOSPC", "E2BIG")
    c.syscall("mem_alloc", {"size": 1 << 19})  # lowering is fine


def test_a_child_gets_no_more_than_its_parent(sec, pair, tmp_path):
    a, ca, b, cb = pair
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    # named after the victim: the child lands under the attacker's name, not in victim's storage
    child = cb.syscall("spawn_agent", {"argv": sleeper, "name": "victim"})
    assert child["name"] == "attacker.victim"
    from libaios.client import Client
    cc = Client(sec.home)
    cc.syscall("set_aid", {"aid": child["aid"]})  # root acting as the child, checked as the child
    assert code_of(lambda: cc.syscall("sto_read", {"path": "notes/secret.txt"})) == "ENOENT"
    cc.close()
    _, _, limited = token_agent(sec, "limited", tmp_path, tools=["calculator"], memory_quota=1 << 20)
    assert code_of(lambda: limited.syscall("spawn_agent", {"argv": sleeper, "tools": ["sql_query"]})) == "EPERM"
    assert code_of(lambda: limited.syscall("spawn_agent", {"argv": sleeper, "memory_quota": 1 << 30})) == "EPERM"
    kid = limited.syscall("spawn_agent", {"argv": sleeper, "name": "kid"})
    row = sec.root.syscall("get_status", {"aid": kid["aid"]})
    assert row["name"] == "limited.kid"
    # the kernel-side cap on live children (max_children = 3 in this daemon)
    codes = [code_of(lambda: limited.syscall("spawn_agent", {"argv": sleeper})) for _ in range(4)]
    assert codes.count("EBUSY") >= 2 and codes[-1] == "EBUSY", codes


def test_data_sealed_by_one_agent_opens_only_for_it_or_a_grantee(sec, pair):
    a, ca, b, cb = pair
    blob = ca.syscall("encrypt_data", {"data": b"launch codes"})
    assert b"launch codes" not in blob
    assert ca.syscall("decrypt_data", {"blob": blob}) == b"launch codes"
    assert code_of(lambda: cb.syscall("decrypt_data", {"blob": blob})) == "EACCES"
    ca.syscall("grant", {"grantee": "name:attacker", "resource": "crypto", "rights": "r"})
    assert cb.syscall("decrypt_data", {"blob": blob}) == b"launch codes"
    ca.syscall("revoke", {"grantee": "name:attacker", "resource": "crypto"})
    assert code_of(lambda: cb.syscall("decrypt_data", {"blob": blob})) == "EACCES"
    # resealing A's ciphertext under B's name gives B nothing either
    forged = blob.replace(b"victim", b"attack", 1)
    assert code_of(lambda: cb.syscall("decrypt_data", {"blob": forged})) in ("EACCES", "EINVAL")


def test_undeclared_tools_are_refused_and_results_are_untrusted(sec, tmp_path):
    _, _, c = token_agent(sec, "calc", tmp_path, tools=["currency_converter"])
    names = [t["function"]["name"] for t in c.syscall("tool_list")]
    assert names == ["currency_converter"]
    for tool in ("sql_query", "web_search", "no_such_tool"):
        assert code_of(lambda t=tool: c.syscall("tool_call", {"name": t, "args": {}})) == "EACCES", tool
    out = c.syscall("tool_call", {"name": "currency_converter", "args": {"amount": 42, "from": "EUR", "to": "EUR"}},
                    timeout=60)
    assert out["untrusted"] is True and "42" in str(out["content"])


@pytest.fixture
def home_db(sec):
    """An SQLite file inside AIOS_HOME, standing for anything of the daemon's an agent must not read."""
    path = sec.home / "data" / "kernel-secret.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS s(v)")
    con.execute("INSERT INTO s VALUES ('root secret')")
    con.commit()
    con.close()
    return path


def test_tool_file_arguments_cannot_reach_the_daemons_home(sec, tmp_path, home_db):
    _, _, c = token_agent(sec, "sqler", tmp_path, tools=["sql_query"])
    link = tmp_path / "innocent.db"
    link.symlink_to(home_db)
    q = "SELECT v FROM s"
    for db, want in ((str(home_db), "EACCES"), (str(link), "EACCES"),
                     (str(sec.home / "run" / ".." / "data" / "kernel-secret.db"), "EACCES"),
                     ("../../data/kernel-secret.db", "EINVAL"), ("kernel-secret.db", "EINVAL"),
                     (str(sec.home / "run" / "root.token"), "EACCES"), (str(sec.home / "master.key"), "EACCES")):
        code = code_of(lambda d=db: c.syscall("tool_call", {"name": "sql_query", "args": {"query": q, "db": d}},
                                              timeout=60))
        assert code == want, (db, code)
    # a database of the agent's own, outside the home, is served
    mine = tmp_path / "mine.db"
    con = sqlite3.connect(mine)
    con.execute("CREATE TABLE s(v)")
    con.execute("INSERT INTO s VALUES ('public')")
    con.commit()
    con.close()
    out = c.syscall("tool_call", {"name": "sql_query", "args": {"query": q, "db": str(mine)}}, timeout=60)
    assert out["content"]["rows"] == [["public"]] and out["untrusted"] is True
