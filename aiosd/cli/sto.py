"""aios-sto ls|cat|versions|snapshots|du|backup|restore: look into an agent's storage as root
(ls, cat and versions of the files that agent name keeps, and its agent snapshots; du, the
bytes each name keeps against its quota, as `docker system df` does for images; every look is
a syscall, so it is audited like any other), and back storage.lmdb up while the daemon runs or
restore it while it is stopped (aiosd/storage_backup.py; these two work on the files directly)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from aiosd.cli.common import add_home, fmt_bytes, home_of, root_client, run_command


def execute(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aios-sto",
                                description="inspect an agent's storage (root); back up or restore all of it")
    add_home(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("ls", help="files of an agent name, optionally under a prefix")
    ls.add_argument("name", help="the agent's name (aios-run --name, or its manifest's)")
    ls.add_argument("prefix", nargs="?", default="")
    ls.add_argument("-l", action="store_true", help="with the latest version, versions kept and size")
    ls.add_argument("--json", action="store_true")
    cat = sub.add_parser("cat", help="a file's bytes on stdout")
    cat.add_argument("name")
    cat.add_argument("path")
    cat.add_argument("-v", "--version", type=int, help="a kept version (default: the latest)")
    ver = sub.add_parser("versions", help="the versions a file keeps, with their sizes")
    ver.add_argument("name")
    ver.add_argument("path")
    ver.add_argument("--json", action="store_true")
    snaps = sub.add_parser("snapshots", help="the agent snapshots a name keeps, with their sizes")
    snaps.add_argument("name")
    snaps.add_argument("--json", action="store_true")
    du = sub.add_parser("du", help="bytes kept, quota and files of every agent name, or of one")
    du.add_argument("name", nargs="?", help="one agent name (default: every one that has written)")
    du.add_argument("--json", action="store_true")
    bak = sub.add_parser("backup", help="a consistent copy of all storage into FILE, while aiosd runs")
    bak.add_argument("file")
    res = sub.add_parser("restore", help="replace all storage with a backup FILE (aiosd stopped)")
    res.add_argument("file")
    args = p.parse_args(argv)
    if args.cmd in ("backup", "restore"):
        return backup_or_restore(args.cmd, home_of(args), Path(args.file).expanduser().resolve())
    client = root_client(home_of(args), timeout=30)

    if args.cmd == "cat":
        got = client.syscall("sto_read", {"path": args.path, "version": args.version, "owner": args.name})
        data = got["data"]
        sys.stdout.buffer.write(data if isinstance(data, bytes) else str(data).encode())
        sys.stdout.flush()
        return 0
    if args.cmd == "du":
        return disk_usage(client, args.name, args.json)
    if args.cmd == "snapshots":
        return snapshots(client, args.name, args.json)
    if args.cmd == "versions":
        rows = client.syscall("sto_versions", {"path": args.path, "owner": args.name})["versions"]
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                print(f"{r['version']:>6}  {fmt_bytes(r['size']):>9}")
        return 0
    paths = client.syscall("sto_list", {"prefix": args.prefix, "owner": args.name})["paths"]
    if not (args.l or args.json):
        for path in paths:
            print(path)
        return 0
    rows = []
    for path in paths:
        kept = client.syscall("sto_versions", {"path": path, "owner": args.name})["versions"]
        rows.append({"path": path, "version": kept[-1]["version"] if kept else 0, "versions": len(kept),
                     "size": kept[-1]["size"] if kept else 0, "bytes_kept": sum(v["size"] for v in kept)})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'VERSION':>7} {'KEPT':>4} {'SIZE':>9} {'ALL KEPT':>9}  PATH")
    for r in rows:
        print(f"{r['version']:>7} {r['versions']:>4} {fmt_bytes(r['size']):>9} {fmt_bytes(r['bytes_kept']):>9}  "
              f"{r['path']}")
    return 0


def backup_or_restore(cmd: str, home: Path, file: Path) -> int:
    from aiosd import storage_backup
    if cmd == "backup":
        out = storage_backup.backup(home, file)
        print(f"backed up {home / 'data' / 'storage.lmdb'} to {out['path']} ({fmt_bytes(out['bytes'])})")
        return 0
    out = storage_backup.restore(home, file)
    kept = f"; the replaced file is {out['replaced']}" if out["replaced"] else ""
    print(f"restored {out['path']} from {file} ({fmt_bytes(out['bytes'])}){kept}")
    return 0


def disk_usage(client, name: str | None, as_json: bool) -> int:
    args = {"owner": name} if name else {"all": True}
    rows = client.syscall("sto_usage", args)["namespaces"]
    if as_json:
        print(json.dumps(rows))
        return 0
    print(f"{'USED':>9} {'QUOTA':>9} {'USE%':>5} {'FILES':>6}  NAME")
    for r in sorted(rows, key=lambda r: -r["used"]):
        pct = 100.0 * r["used"] / r["quota"] if r["quota"] else 0.0
        print(f"{fmt_bytes(r['used']):>9} {fmt_bytes(r['quota']):>9} {pct:>4.0f}% {r['files']:>6}  {r['name']}")
    return 0


def snapshots(client, name: str, as_json: bool) -> int:
    rows = client.syscall("snapshot_list", {"owner": name})["snapshots"]
    if as_json:
        print(json.dumps(rows))
        return 0
    print(f"{'SNAPSHOT':<24} {'CREATED':<19} {'FILES':>5} {'RECORDS':>7} {'SIZE':>9}  LABEL")
    for r in rows:
        made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"] or 0))
        files = "-" if r["files"] is None else r["files"]
        records = "-" if r["records"] is None else r["records"]
        print(f"{r['snapshot']:<24} {made:<19} {files:>5} {records:>7} {fmt_bytes(r['bytes']):>9}  {r['label']}")
    return 0


def main() -> int:
    return run_command("aios-sto", execute)


if __name__ == "__main__":
    sys.exit(main())
