"""aios-sto backup while 16 agents write, aios-sto restore while the daemon is stopped: the
restored state is the backup's, whole, and aids still go on after the newest ever given."""

from __future__ import annotations

import threading

from libaios import AiosError
from libaios.client import Client


def test_hot_backup_then_restore_brings_back_that_state(make_daemon, tmp_path):
    d = make_daemon(managers="storage")
    _, keeper = d.agent("bk-keeper")
    keeper.syscall("sto_write", {"path": "a", "data": b"before the backup"})
    stop = threading.Event()
    writers = [d.agent(f"bk-w{i}") for i in range(16)]

    def write(client) -> None:  # the backup is taken while the daemon is busy writing
        n = 0
        while not stop.is_set():
            try:
                client.syscall("sto_write", {"path": f"w/{n % 64}", "data": b"x" * 1024}, timeout=30)
            except AiosError:
                return
            n += 1

    threads = [threading.Thread(target=write, args=(c,), daemon=True) for _, c in writers]
    for t in threads:
        t.start()
    dest = tmp_path / "storage.backup"
    out = d.run_cli("aios-sto", "backup", str(dest))
    stop.set()
    for t in threads:
        t.join(30)
    assert out.returncode == 0 and out.stdout.startswith("backed up "), out.stderr
    again = d.run_cli("aios-sto", "backup", str(dest))
    assert again.returncode == 1 and again.stderr.startswith("aios-sto: EEXIST: ")
    keeper.syscall("sto_write", {"path": "a", "data": b"after the backup"})
    keeper.syscall("sto_write", {"path": "b", "data": b"after the backup"})
    busy = d.run_cli("aios-sto", "restore", str(dest))
    assert busy.returncode == 1 and busy.stderr.startswith("aios-sto: EBUSY: ") and busy.stderr.count("\n") == 1
    last_aid = d.agent("bk-last")[0]
    assert d.run_cli("aiosd", "stop").returncode == 0
    junk = tmp_path / "junk"
    junk.write_bytes(b"not lmdb" * 1000)
    bad = d.run_cli("aios-sto", "restore", str(junk))
    assert bad.returncode == 1 and bad.stderr.startswith("aios-sto: EINVAL: ")
    res = d.run_cli("aios-sto", "restore", str(dest))
    assert res.returncode == 0 and "data.mdb.replaced" in res.stdout, res.stderr
    assert d.run_cli("aiosd", "start", "--timeout", "60").returncode == 0
    d.root = Client(d.home)
    aid, c = d.agent("bk-keeper")
    assert aid > last_aid  # never an aid given before the restore
    assert c.syscall("sto_list", {})["paths"] == ["a"]
    assert c.syscall("sto_read", {"path": "a"}) == {"data": b"before the backup", "version": 1}
    for i in range(len(writers)):  # every writer's files are whole 1 KiB records
        _, w = d.agent(f"bk-w{i}")
        for path in w.syscall("sto_list", {"prefix": "w/"})["paths"]:
            assert w.syscall("sto_read", {"path": path})["data"] == b"x" * 1024
