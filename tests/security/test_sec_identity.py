"""Identity attacks: who a request comes from is decided by its connection's token, never
by what the message says, and a token is worth nothing once its agent is gone."""

from __future__ import annotations

import json
import secrets
import sys

import pytest
from secd import Client, audit_of, code_of, pack, raw_socket, rpc, sec, token_agent, wait_for

__all__ = ["sec"]


def test_forged_identity_in_the_body_is_ignored(sec, tmp_path):
    a, _, ca = token_agent(sec, "owner", tmp_path)
    b, tok_b, _ = token_agent(sec, "thief", tmp_path)
    ca.syscall("sto_write", {"path": "secret.txt", "data": b"A's secret"})
    ca.syscall("mem_write", {"content": "A's memory"})
    s = raw_socket(sec.home, str(b), tok_b)
    forged = {"aid": a, "user": "root", "name": "owner", "is_root": True,
              "ctx": {"name": "owner", "is_root": True, "target": a}}
    # the body claims to be A (or root); the kernel answers as B: B's own empty namespace
    r = rpc(s, pack({"id": 1, "call": "sto_read", "args": {"path": "secret.txt"}, **forged}))
    assert r["ok"] is False and r["error"]["code"] == "ENOENT", r
    r = rpc(s, pack({"id": 2, "call": "get_aid", "args": {}, **forged}))
    assert r == {"id": 2, "ok": True, "result": b}
    r = rpc(s, pack({"id": 3, "call": "mem_read", "args": {"last": 10}, **forged}))
    assert r["ok"] and "A's memory" not in json.dumps(r["result"], default=str)
    # identity fields smuggled into the arguments are unknown arguments: EINVAL
    r = rpc(s, pack({"id": 4, "call": "sto_read", "args": {"path": "secret.txt", "ctx": {"is_root": True}}}))
    assert r["error"]["code"] == "EINVAL"
    # naming A as the target goes through the access check
    r = rpc(s, pack({"id": 5, "call": "mem_read", "args": {"aid": a}}))
    assert r["error"]["code"] == "EACCES"
    r = rpc(s, pack({"id": 6, "call": "set_aid", "args": {"aid": a}}))
    assert r["error"]["code"] == "EPERM"
    s.close()


def test_replayed_token_of_an_exited_agent(sec, tmp_path):
    aid, tok, client = token_agent(sec, "shortlived", tmp_path)
    assert client.syscall("get_aid") == aid
    client.close()
    sec.root.syscall("kill_agent", {"aid": aid, "signal": "KILL"})
    sec.root.syscall("wait_agent", {"aid": aid, "timeout": 10})
    replay = Client(sec.home, aid=aid, token=tok)
    for call, args in (("get_aid", {}), ("sto_list", {}), ("mem_read", {"last": 1})):
        assert code_of(lambda c=call, a=args: replay.syscall(c, a, timeout=5)) == "EACCES"
    replay.close()
    # nor does the token open another aid, a new agent, or root
    new, _, _ = token_agent(sec, "next", tmp_path)
    for user in (str(new), "root", "0"):
        s = raw_socket(sec.home, user, tok)
        assert rpc(s, pack({"id": 1, "call": "get_aid", "args": {}}))["error"]["code"] == "EACCES"
        s.close()


@pytest.mark.parametrize("user,password", [
    (None, None),                       # no PLAIN at all
    ("root", "x"),
    ("root", "0" * 64),
    ("1", secrets.token_hex(32)),       # a guessed token for a low aid
    ("anon", "anon"),
    ("aid:1", "x"),
    ("-1", "y"),
    ("root\0", "x"),
])
def test_no_or_guessed_token_gets_only_eacces(sec, tmp_path, user, password):
    token_agent(sec, "bystander", tmp_path)
    s = raw_socket(sec.home, user, password)
    for i, call in enumerate(("get_aid", "list_agents", "sys_status", "sto_list", "audit_query", "sys_stop")):
        r = rpc(s, pack({"id": i, "call": call, "args": {}}), timeout_s=2 if user is None else 5)
        if user is None:
            # a socket with no PLAIN never completes the handshake: no answer at all
            assert r is None
            break
        assert r == {"id": i, "ok": False, "error": r["error"]} and r["error"]["code"] == "EACCES", r
    s.close()
    assert sec.root.syscall("get_aid") == 0  # still serving (sys_stop above was refused)


def test_tokens_never_leave_the_kernel(sec, tmp_path):
    aid, tok, client = token_agent(sec, "secretive", tmp_path)
    client.syscall("log_event", {"message": "hello"})
    ps = sec.run_cli("aios-ps", "-a", "--json")
    assert ps.returncode == 0 and tok not in ps.stdout
    row = client.syscall("get_status")
    assert tok not in json.dumps(row, default=str)
    assert tok not in json.dumps(sec.root.syscall("list_agents", {"all": True}), default=str)
    audit_of(sec, aid, "log_event")
    logs = sec.run_cli("aios-logs", "--audit", "--aid", str(aid), "--json")
    assert logs.returncode == 0 and tok not in logs.stdout
    for path in (sec.home / "logs").glob("*.log"):
        assert tok not in path.read_text(errors="replace"), path
    root_tok = (sec.home / "run" / "root.token").read_text()
    assert root_tok not in ps.stdout
    for path in (sec.home / "logs").glob("*.log"):
        assert root_tok not in path.read_text(errors="replace"), path


def test_an_agent_cannot_read_another_agents_environment_through_the_kernel(sec, tmp_path):
    a, tok_a, _ = token_agent(sec, "envowner", tmp_path)
    _, _, cb = token_agent(sec, "envspy", tmp_path)
    row = cb.syscall("get_status", {"aid": a})  # status is readable, secrets are not
    assert "env" not in row and tok_a not in json.dumps(row, default=str)
    wait_for(lambda: sys.executable in row["argv"])
