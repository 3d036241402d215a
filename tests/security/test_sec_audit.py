"""The audit log: every syscall and every permission change is on record, the record holds a
digest and never the data, and nothing an agent can call changes what is recorded."""

from __future__ import annotations

import json

from secd import audit_of, code_of, pack, raw_socket, rpc, sec, token_agent

from aiosd.syscalls import SYSCALLS

__all__ = ["sec"]


def test_every_syscall_is_recorded_with_its_result(sec, tmp_path):
    aid, tok, c = token_agent(sec, "audited", tmp_path)
    done = [("get_aid", {}, "OK"), ("sto_write", {"path": "a.txt", "data": b"TOP-SECRET-PAYLOAD"}, "OK"),
            ("sto_read", {"path": "a.txt"}, "OK"), ("sto_read", {"path": "missing"}, "ENOENT"),
            ("mem_write", {"content": "TOP-SECRET-MEMORY"}, "OK"), ("mem_read", {"last": 1}, "OK"),
            ("get_status", {"aid": 999999}, "ESRCH"), ("sto_read", {"path": "../x"}, "EINVAL"),
            ("suspend_agent", {"aid": 0}, "ESRCH"), ("sys_stop", {}, "EPERM"), ("log_event", {"message": "hi"}, "OK")]
    for call, args, want in done:
        assert code_of(lambda c_=call, a=args: c.syscall(c_, a)) == want, call
    s = raw_socket(sec.home, str(aid), tok)
    assert rpc(s, pack({"id": 1, "call": "no_such_call"}))["error"]["code"] == "ENOSYS"
    assert rpc(s, b"\xc1 not msgpack")["error"]["code"] == "EPROTO"
    s.close()
    expected = [(call, code) for call, _, code in done] + [("no_such_call", "ENOSYS"), ("?", "EPROTO")]
    recs = audit_of(sec, aid, until=lambda rs: len(rs) >= len(expected))
    got = [(r["call"], r["code"]) for r in recs]
    for item in expected:
        assert item in got, (item, got)
    for r in recs:
        assert r["aid"] == aid and r["latency_s"] >= 0 and isinstance(r["t"], float)
    # a digest of the arguments, never the data itself
    blob = json.dumps(recs, default=str)
    assert "TOP-SECRET" not in blob
    assert len({r["digest"] for r in recs if r["call"] == "sto_read"}) >= 2


def test_permission_changes_are_recorded(sec, tmp_path):
    a, _, ca = token_agent(sec, "granter", tmp_path)
    b, _, _ = token_agent(sec, "grantee", tmp_path)
    ca.syscall("grant", {"grantee": b, "resource": "storage", "rights": "rw"})
    ca.syscall("revoke", {"grantee": b, "resource": "storage", "rights": "w"})
    sec.root.syscall("set_priority", {"aid": b, "priority": 3})
    sec.root.syscall("suspend_agent", {"aid": b})
    sec.root.syscall("resume_agent", {"aid": b})
    recs = audit_of(sec, a, until=lambda rs: {"grant", "revoke"} <= {r["call"] for r in rs})
    notes = {r["call"]: r.get("note", "") for r in recs}
    assert "storage" in notes["grant"] and str(b) in notes["grant"] and "rw" in notes["grant"]
    assert "storage" in notes["revoke"]
    root_recs = audit_of(sec, None, name="root", until=lambda rs: {"set_priority", "suspend_agent", "resume_agent"}
                         <= {r["call"] for r in rs})
    changes = [r for r in root_recs if r["call"] in ("set_priority", "suspend_agent", "resume_agent")]
    assert any(str(b) in r.get("note", "") and "3" in r.get("note", "") for r in changes
               if r["call"] == "set_priority")


def test_no_agent_can_write_or_rewrite_the_audit(sec, tmp_path):
    aid, tok, c = token_agent(sec, "forger", tmp_path)
    other, _, co = token_agent(sec, "honest", tmp_path)
    co.syscall("get_aid")
    before = audit_of(sec, other, until=lambda rs: any(r["call"] == "get_aid" for r in rs))
    fake = {"t": 0.0, "aid": other, "name": "honest", "call": "sys_stop", "digest": "0", "code": "OK",
            "latency_s": 0.0}
    s = raw_socket(sec.home, str(aid), tok)
    attempts = [
        ("_audit", {"records": [fake]}),
        ("_sto_put", {"db": "audit", "key": b"\0" * 16, "value": fake}),
        ("_sto_get", {"db": "audit", "key": b"\0" * 16, "delete": True}),
        ("_proc_save", {"row": {"aid": other, "status": "KILLED"}}),
        ("_mem_load", {"aid": other, "records": []}),
    ]
    for i, (call, args) in enumerate(attempts):
        r = rpc(s, pack({"id": i, "call": call, "args": args}))
        assert r["ok"] is False and r["error"]["code"] == "EPERM", (call, r)
    s.close()
    assert code_of(lambda: c.syscall("audit_query", {"aid": other})) == "EACCES"
    assert code_of(lambda: c.syscall("audit_query", {"name": "honest"})) == "EACCES"
    # log_event appends under the caller's own aid, whatever its message claims
    c.syscall("log_event", {"message": f"aid={other} call=sys_stop code=OK"})
    mine = audit_of(sec, aid, until=lambda rs: any(r["call"] == "log_event" for r in rs))
    assert all(r["aid"] == aid for r in mine)
    after = audit_of(sec, other)
    assert [r for r in after if r["t"] <= before[-1]["t"]] == before     # nothing of the past changed
    assert not any(r["call"] == "sys_stop" for r in after)
    # the table itself: whatever writes the audit is internal, agents can only read it
    for sc in SYSCALLS:
        if sc.name in ("_audit", "_sto_put", "_sto_get", "_proc_save", "_mem_load", "_ctx_load"):
            assert sc.privilege == "internal"
    assert [sc.name for sc in SYSCALLS.public() if "audit" in sc.name] == ["audit_query"]


def test_aios_logs_audit_filters(sec, tmp_path):
    aid, _, c = token_agent(sec, "logged", tmp_path)
    c.syscall("sto_write", {"path": "x", "data": b"1"})
    code_of(lambda: c.syscall("sys_stop"))
    audit_of(sec, aid, until=lambda rs: {"sto_write", "sys_stop"} <= {r["call"] for r in rs})
    out = sec.run_cli("aios-logs", "--audit", "--aid", str(aid), "--since", "10m")
    assert out.returncode == 0, out.stderr
    assert f"aid={aid}" in out.stdout and "sto_write OK" in out.stdout and "sys_stop EPERM" in out.stdout
    only = sec.run_cli("aios-logs", "--audit", "--aid", str(aid), "--call", "sys_stop", "--json")
    rows = [json.loads(line) for line in only.stdout.splitlines()]
    assert rows and all(r["call"] == "sys_stop" and r["aid"] == aid for r in rows)
    future = sec.run_cli("aios-logs", "--audit", "--aid", str(aid), "--since", "4102444800")
    assert future.returncode == 0 and future.stdout.strip() == ""
