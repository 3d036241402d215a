"""The storage manager through the real daemon: namespaces, grants, paths, quotas,
versions and rollback, retrieval, agent snapshots, the audit log."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import lmdb
import pytest

from errutil import code_of
from libaios import AiosError
from libaios.client import Client


def test_write_read_versions_and_rollback(daemon):
    _, c = daemon.agent("sto-versions")
    for i in range(1, 4):
        assert c.syscall("sto_write", {"path": "notes/plan.txt", "data": f"draft {i}"})["version"] == i
    assert c.syscall("sto_read", {"path": "notes/plan.txt"}) == {"data": b"draft 3", "version": 3}
    assert c.syscall("sto_read", {"path": "notes/plan.txt", "version": 1})["data"] == b"draft 1"
    assert [v["version"] for v in c.syscall("sto_versions", {"path": "notes/plan.txt"})["versions"]] == [1, 2, 3]
    # rolling back is writing an old version again: history stays readable
    old = c.syscall("sto_read", {"path": "notes/plan.txt", "version": 1})["data"]
    assert c.syscall("sto_write", {"path": "notes/plan.txt", "data": old})["version"] == 4
    assert c.syscall("sto_read", {"path": "notes/plan.txt"})["data"] == b"draft 1"
    assert c.syscall("sto_list", {"prefix": "notes/"})["paths"] == ["notes/plan.txt"]
    c.syscall("sto_delete", {"path": "notes/plan.txt"})
    assert code_of(c.syscall, "sto_read", {"path": "notes/plan.txt"}) == "ENOENT"


def test_versions_kept_is_bounded(daemon):
    _, c = daemon.agent("sto-kept")
    n = daemon.cfg.versions_kept + 3
    for i in range(n):
        c.syscall("sto_write", {"path": "f", "data": str(i)})
    kept = [v["version"] for v in c.syscall("sto_versions", {"path": "f"})["versions"]]
    assert kept == list(range(4, n + 1))
    assert code_of(c.syscall, "sto_read", {"path": "f", "version": 1}) == "ENOENT"
    # the bytes of dropped versions are freed once writing pauses (a second), not each right after
    # its write: that would be a second synced transaction for every write of a lone writer
    assert dead_versions(daemon) > 0
    deadline = time.monotonic() + 10
    while dead_versions(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dead_versions(daemon) == 0
    assert c.syscall("sto_read", {"path": "f", "version": 4})["data"] == b"3"


def dead_versions(daemon) -> int:
    env = lmdb.open(str(daemon.cfg.data_dir / "storage.lmdb"), readonly=True, max_dbs=16)
    try:
        with env.begin() as txn:
            return txn.stat(env.open_db(b"dead", txn=txn, create=False))["entries"]
    finally:
        env.close()


def last_txnid(daemon) -> int:
    env = lmdb.open(str(daemon.cfg.data_dir / "storage.lmdb"), readonly=True, max_dbs=16)
    try:
        return env.info()["last_txnid"]
    finally:
        env.close()


def test_concurrent_writes_share_synced_transactions(daemon):
    """Group commit through the daemon: writes in flight together are committed and synced
    together. One transaction per write (group_commit = false) would be 640 or more."""
    _, c = daemon.agent("sto-group")
    c.syscall("sto_write", {"path": "warm", "data": b"x"})
    before = last_txnid(daemon)

    def writer(t: int) -> list[int]:  # each thread has its own connection to the kernel
        return [c.syscall("sto_write", {"path": f"t{t}/{i}", "data": b"%d" % i * 100})["version"]
                for i in range(40)]

    with ThreadPoolExecutor(16) as pool:
        versions = [v for vs in pool.map(writer, range(16)) for v in vs]
    commits = last_txnid(daemon) - before  # the kernel's audit batches are in it too
    assert versions == [1] * 640
    assert commits < 640 // 2, f"{commits} synced transactions for 640 concurrent writes"
    assert c.syscall("sto_read", {"path": "t15/39"})["data"] == b"39" * 100


@pytest.mark.parametrize("path", ["../escape", "a/../../etc/passwd", "/etc/passwd", "a\0b", "x" * 1025, "",
                                  "a//b", "./a"])
def test_path_traversal_is_einval(daemon, path):
    _, c = daemon.agent("sto-paths")
    assert code_of(c.syscall, "sto_write", {"path": path, "data": b"x"}) == "EINVAL"
    assert code_of(c.syscall, "sto_read", {"path": path}) in ("EINVAL",)
    assert c.syscall("sto_list", {})["paths"] == []


def test_names_too_long_for_an_lmdb_key_are_refused_and_the_managers_keep_serving(daemon):
    """LMDB keys hold 511 bytes. A longer path, memory key or snapshot name used to take the
    storage (or memory) manager down with it, and with it every writer in the same group
    commit (and every agent's memory): now it is the caller's EINVAL or ENOENT alone."""
    from aiosd.storage_paths import MAX_FILE_KEY
    pids = {m: daemon.manager_pid(m) for m in ("storage", "memory")}
    name = "n" * 64  # the longest agent name
    _, c = daemon.agent(name)
    room = MAX_FILE_KEY - len(name.encode()) - 1
    longest = "p" * room
    assert c.syscall("sto_write", {"path": longest, "data": b"fits"})["version"] == 1
    assert c.syscall("sto_read", {"path": longest})["data"] == b"fits"
    for path in ("p" * (room + 1), "\u00e9" * 300, "d/" * 250 + "f"):
        assert code_of(c.syscall, "sto_write", {"path": path, "data": b"x"}) == "EINVAL"
        assert code_of(c.syscall, "sto_read", {"path": path}) == "EINVAL"
        assert code_of(c.syscall, "sto_list", {"prefix": path}) == "EINVAL"

    def write(i: int) -> str:  # good and bad writes in flight together, in the same batches
        path = "p" * (room + 1 + i) if i % 4 == 0 else f"ok/{i}"
        try:
            return str(c.syscall("sto_write", {"path": path, "data": b"%d" % i})["version"])
        except AiosError as exc:
            return exc.code

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(write, range(64)))
    assert got == ["EINVAL" if i % 4 == 0 else "1" for i in range(64)]
    assert code_of(c.syscall, "snapshot_restore", {"snapshot": "\U0001F600" * 64}) == "ENOENT"
    assert code_of(c.syscall, "snapshot_delete", {"snapshot": "\U0001F600" * 64}) == "ENOENT"
    key = "k" * 1000  # a memory key may be 1024 characters: too long for the kernel's mirror, not for memory
    c.syscall("mem_write", {"content": "long-keyed", "key": key})
    assert c.syscall("mem_read", {"key": key})["records"][0]["content"] == "long-keyed"
    c.syscall("mem_clear", {"key": key})
    assert code_of(c.syscall, "mem_read", {"key": key}) == "ENOENT"
    assert {m: daemon.manager_pid(m) for m in pids} == pids


def test_namespaces_isolated_until_granted(daemon):
    _, alice = daemon.agent("sto-alice")
    _, bob = daemon.agent("sto-bob")
    alice.syscall("sto_write", {"path": "secret", "data": b"alice's"})
    bob.syscall("sto_write", {"path": "secret", "data": b"bob's"})
    assert bob.syscall("sto_read", {"path": "secret"})["data"] == b"bob's"
    for call, args in (("sto_read", {"path": "secret"}), ("sto_list", {}), ("sto_versions", {"path": "secret"}),
                       ("sto_write", {"path": "x", "data": b"1"}), ("sto_delete", {"path": "secret"}),
                       ("sto_retrieve", {"query": "secret"})):
        assert code_of(bob.syscall, call, {**args, "owner": "sto-alice"}) == "EACCES", call
    alice.syscall("grant", {"grantee": "name:sto-bob", "resource": "storage", "rights": "r"})
    assert bob.syscall("sto_read", {"path": "secret", "owner": "sto-alice"})["data"] == b"alice's"
    assert code_of(bob.syscall, "sto_write", {"path": "x", "data": b"1", "owner": "sto-alice"}) == "EACCES"
    # the namespace belongs to the name: the same agent run again finds its files
    _, alice2 = daemon.agent("sto-alice")
    assert alice2.syscall("sto_read", {"path": "secret"})["data"] == b"alice's"


def test_quota_enospc(daemon):
    _, c = daemon.agent("sto-quota", storage_quota=4000)  # the ceiling sto_alloc may raise to
    c.syscall("sto_alloc", {"size": 1000})
    c.syscall("sto_write", {"path": "a", "data": b"x" * 600})
    assert code_of(c.syscall, "sto_write", {"path": "b", "data": b"x" * 600}) == "ENOSPC"
    assert c.syscall("sto_list", {})["paths"] == ["a"]
    c.syscall("sto_alloc", {"size": 4000})
    c.syscall("sto_write", {"path": "b", "data": b"x" * 600})
    assert code_of(c.syscall, "sto_alloc", {"size": 10}) == "ENOSPC"  # below what it holds
    assert code_of(c.syscall, "sto_alloc", {"size": 1 << 30}) == "ENOSPC"  # over the ceiling


def test_large_file_through_shared_memory(daemon):
    _, c = daemon.agent("sto-big")
    blob = bytes(range(256)) * 4096  # 1 MiB: over the inline threshold both ways
    c.syscall("sto_write", {"path": "big.bin", "data": blob})
    assert c.syscall("sto_read", {"path": "big.bin"})["data"] == blob


def test_retrieve_finds_relevant_text(daemon):
    _, c = daemon.agent("sto-rag")
    c.syscall("sto_write", {"path": "prefs/food", "data": "The user is vegetarian and loves spicy Thai curry."})
    c.syscall("sto_write", {"path": "prefs/travel", "data": "Prefers window seats on morning flights."})
    c.syscall("sto_write", {"path": "blob.bin", "data": b"\x00\xff\x00binary"})
    out = c.syscall("sto_retrieve", {"query": "what should I cook for dinner?", "k": 2}, timeout=120)["results"]
    assert out[0]["path"] == "prefs/food" and out[0]["score"] > out[1]["score"]
    assert all(r["path"] != "blob.bin" for r in out)


def test_agent_snapshot_and_restore(daemon):
    aid, c = daemon.agent("sto-snap")
    c.syscall("sto_write", {"path": "state", "data": b"before"})
    c.syscall("mem_write", {"content": "remember this", "key": "k"})
    snap = c.syscall("snapshot_create", {"label": "checkpoint"}, timeout=60)
    assert snap["files"] == 1 and snap["records"] == 1
    c.syscall("sto_write", {"path": "state", "data": b"after"})
    c.syscall("sto_write", {"path": "later", "data": b"new file"})
    c.syscall("mem_clear", {"all": True})
    c.syscall("mem_write", {"content": "something else"})
    out = c.syscall("snapshot_restore", {"snapshot": snap["snapshot"]}, timeout=60)
    assert out["files"] == 1
    assert c.syscall("sto_read", {"path": "state"})["data"] == b"before"
    assert c.syscall("sto_list", {})["paths"] == ["state"]
    recs = c.syscall("mem_read", {})["records"]
    assert [r["content"] for r in recs] == ["remember this"]
    assert code_of(c.syscall, "snapshot_restore", {"snapshot": "snap-nope"}) == "ENOENT"


def test_agent_snapshots_are_listed_deleted_and_count_in_the_storage_quota(make_daemon):
    d = make_daemon(managers="storage,memory")
    _, c = d.agent("snap-quota")
    _, other = d.agent("snap-other")
    c.syscall("sto_alloc", {"size": 64 * 1024})
    c.syscall("sto_write", {"path": "big", "data": b"x" * 20000})
    used = c.syscall("sto_usage", {})["namespaces"][0]["used"]
    first = c.syscall("snapshot_create", {"label": "one"}, timeout=60)
    second = c.syscall("snapshot_create", {"label": "two"}, timeout=60)
    assert first["bytes"] > 20000 and c.syscall("sto_usage", {})["namespaces"][0]["used"] == (
        used + first["bytes"] + second["bytes"])
    # a third copy of the file would pass the quota: refused, and nothing kept
    assert code_of(c.syscall, "snapshot_create", {"label": "three"}) == "ENOSPC"
    listed = c.syscall("snapshot_list", {})["snapshots"]
    assert [(s["snapshot"], s["label"], s["files"], s["bytes"]) for s in listed] == [
        (first["snapshot"], "one", 1, first["bytes"]), (second["snapshot"], "two", 1, second["bytes"])]
    assert other.syscall("snapshot_list", {})["snapshots"] == []  # each name sees its own
    assert code_of(other.syscall, "snapshot_list", {"owner": "snap-quota"}) == "EACCES"
    assert d.root.syscall("snapshot_list", {"owner": "snap-quota"})["snapshots"] == listed
    c.syscall("grant", {"grantee": "name:snap-other", "resource": "storage", "rights": "r"})
    assert other.syscall("snapshot_list", {"owner": "snap-quota"})["snapshots"] == listed
    out = d.run_cli("aios-sto", "snapshots", "snap-quota", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == listed, out.stderr
    table = d.run_cli("aios-sto", "snapshots", "snap-quota").stdout.splitlines()
    assert table[0].split() == ["SNAPSHOT", "CREATED", "FILES", "RECORDS", "SIZE", "LABEL"]
    assert [(ln.split()[0], ln.split()[-1]) for ln in table[1:]] == [(first["snapshot"], "one"),
                                                                       (second["snapshot"], "two")]
    assert code_of(other.syscall, "snapshot_delete", {"snapshot": first["snapshot"]}) == "ENOENT"
    assert c.syscall("snapshot_delete", {"snapshot": first["snapshot"]})["bytes"] == first["bytes"]
    assert c.syscall("sto_usage", {})["namespaces"][0]["used"] == used + second["bytes"]
    assert [s["snapshot"] for s in c.syscall("snapshot_list", {})["snapshots"]] == [second["snapshot"]]
    assert code_of(c.syscall, "snapshot_restore", {"snapshot": first["snapshot"]}) == "ENOENT"
    assert c.syscall("snapshot_create", {"label": "three"}, timeout=60)["files"] == 1  # room again


def test_audit_query_own_records_only(daemon):
    aid, c = daemon.agent("sto-audit")
    _, other = daemon.agent("sto-audit-other")
    c.syscall("sto_list", {})
    import time
    deadline = time.time() + 5
    while time.time() < deadline:
        recs = c.syscall("audit_query", {"call": "sto_list"})["records"]
        if recs:
            break
        time.sleep(0.1)
    assert recs and all(r["aid"] == aid for r in recs)
    assert code_of(other.syscall, "audit_query", {"aid": aid}) == "EACCES"
    assert code_of(other.syscall, "audit_query", {"name": "sto-audit"}) == "EACCES"
    assert daemon.root.syscall("audit_query", {"aid": aid, "call": "sto_list"})["records"]
    # a call refused before it reached a manager is recorded under the caller's name too
    assert code_of(other.syscall, "sto_read", {"path": "x", "owner": "sto-audit"}) == "EACCES"
    deadline = time.time() + 5
    while time.time() < deadline:
        recs = daemon.root.syscall("audit_query", {"name": "sto-audit-other", "call": "sto_read"})["records"]
        if recs:
            break
        time.sleep(0.1)
    assert recs and recs[0]["code"] == "EACCES"
    out = daemon.run_cli("aios-logs", "--audit", "--name", "sto-audit-other", "--call", "sto_read")
    assert out.returncode == 0 and "sto-audit-other sto_read EACCES" in out.stdout, out.stderr


def test_aios_sto_shows_an_agents_files_as_root(daemon):
    _, c = daemon.agent("sto-cli")
    for i in range(3):
        c.syscall("sto_write", {"path": "notes/plan.txt", "data": f"draft {i}"})
    c.syscall("sto_write", {"path": "data.bin", "data": b"\x00\xff"})
    ls = daemon.run_cli("aios-sto", "ls", "sto-cli")
    assert ls.returncode == 0 and ls.stdout.split() == ["data.bin", "notes/plan.txt"], ls.stderr
    assert daemon.run_cli("aios-sto", "ls", "sto-cli", "notes/").stdout.split() == ["notes/plan.txt"]
    long = daemon.run_cli("aios-sto", "ls", "-l", "sto-cli").stdout.splitlines()
    assert long[0].split()[:2] == ["VERSION", "KEPT"] and long[2].split()[:2] == ["3", "3"]
    assert daemon.run_cli("aios-sto", "cat", "sto-cli", "notes/plan.txt").stdout == "draft 2"
    assert daemon.run_cli("aios-sto", "cat", "sto-cli", "notes/plan.txt", "-v", "1").stdout == "draft 0"
    versions = daemon.run_cli("aios-sto", "versions", "sto-cli", "notes/plan.txt", "--json")
    assert [v["version"] for v in json.loads(versions.stdout)] == [1, 2, 3]
    missing = daemon.run_cli("aios-sto", "cat", "sto-cli", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("aios-sto: ENOENT: ")
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    hostile = daemon.run_cli("aios-sto", "cat", "sto-cli", "../other/x")
    assert hostile.returncode == 1 and hostile.stderr.startswith("aios-sto: EINVAL: ")


def test_usage_per_name_for_agents_and_aios_sto_du(daemon):
    _, a = daemon.agent("du-a")
    _, b = daemon.agent("du-b")
    a.syscall("sto_alloc", {"size": 1 << 20})
    for _ in range(2):
        a.syscall("sto_write", {"path": "f", "data": b"x" * 1000})  # two kept versions
    a.syscall("sto_write", {"path": "g", "data": b"y" * 24})
    b.syscall("sto_write", {"path": "h", "data": b"z"})
    assert a.syscall("sto_usage", {})["namespaces"] == [
        {"name": "du-a", "used": 2024, "quota": 1 << 20, "files": 2}]
    # another name's usage needs a grant, every name's needs root
    assert code_of(b.syscall, "sto_usage", {"owner": "du-a"}) == "EACCES"
    assert code_of(b.syscall, "sto_usage", {"all": True}) == "EACCES"
    rows = {r["name"]: r for r in daemon.root.syscall("sto_usage", {"all": True})["namespaces"]}
    assert rows["du-a"]["used"] == 2024 and rows["du-b"] == {"name": "du-b", "used": 1,
                                                             "quota": rows["du-b"]["quota"], "files": 1}
    du = daemon.run_cli("aios-sto", "du")
    assert du.returncode == 0 and du.stdout.split()[:5] == ["USED", "QUOTA", "USE%", "FILES", "NAME"], du.stderr
    assert any(line.split()[-2:] == ["2", "du-a"] for line in du.stdout.splitlines())
    one = json.loads(daemon.run_cli("aios-sto", "du", "du-b", "--json").stdout)
    assert [r["name"] for r in one] == ["du-b"]


def test_audit_query_sees_every_call_answered_before_it(daemon):
    # the kernel batches audit records for up to 50 ms; a query must not miss that batch
    _, c = daemon.agent("audit-ryw")
    for i in range(1, 21):
        c.syscall("sto_list", {})
        recs = c.syscall("audit_query", {"call": "sto_list", "limit": 1000})["records"]
        assert len(recs) == i
        assert len(daemon.root.syscall("audit_query", {"name": "audit-ryw", "call": "audit_query"})["records"]) == i


def test_audit_log_is_kept_to_audit_keep_records(make_daemon):
    d = make_daemon(managers="storage", audit_keep=100)
    _, c = d.agent("audit-bound")
    for _ in range(400):
        c.syscall("sto_list", {})

    def count() -> int:
        c.syscall("get_status", {})  # keeps records (and so storage's idle checks) coming
        return len(d.root.syscall("audit_query", {"limit": 100000})["records"])

    deadline = time.time() + 20
    while count() > 110 and time.time() < deadline:  # what arrived after the last check may wait
        time.sleep(0.2)
    assert count() <= 110
    newest = d.root.syscall("audit_query", {"call": "get_status", "limit": 1})["records"]
    assert newest and newest[0]["name"] == "audit-bound"  # the oldest went, not the newest


def test_saved_process_rows_are_kept_to_procs_kept_and_aids_still_go_on(make_daemon):
    d = make_daemon(managers="storage", procs_kept=3)
    aids = []
    for i in range(6):
        aid = d.root.syscall("spawn_agent", {"argv": [sys.executable, "-c", "pass"], "name": f"short-{i}"})["aid"]
        d.root.syscall("wait_agent", {"aid": aid, "timeout": 30})
        aids.append(aid)

    def saved() -> list[int]:
        d.root.syscall("get_status", {})  # keeps messages (and so storage's idle checks) coming
        env = lmdb.open(str(d.home / "data" / "storage.lmdb"), readonly=True, max_dbs=16)
        try:
            with env.begin(db=env.open_db(b"procs", create=False)) as txn:
                return [int.from_bytes(k, "big") for k in txn.cursor().iternext(values=False)]
        finally:
            env.close()

    deadline = time.time() + 20
    while saved() != aids[-3:] and time.time() < deadline:
        time.sleep(0.2)
    assert saved() == aids[-3:]  # the newest rows, the oldest went
    assert d.run_cli("aiosd", "stop").returncode == 0
    assert d.run_cli("aiosd", "start", "--timeout", "60").returncode == 0
    d.root = Client(d.home)
    assert d.agent("after-restart")[0] > aids[-1]  # a new kernel still goes on after the newest aid
