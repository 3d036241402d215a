"""sql_query (Table 1, database query): SQLite opened read-only through a `mode=ro` URI,
a statement time limit enforced by a progress handler, a row cap.

The database is a path on disk, or a file of the agent's storage that the tools manager
fetched (`storage` argument) and handed over as bytes, written into the call's scratch dir.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.parse
from pathlib import Path

from aiosd.errors import AiosError
from aiosd.tools.registry import Tool, ToolContext

MAX_ROWS = 1000


def _db_path(args: dict, ctx: ToolContext) -> Path:
    data = ctx.extra.get("storage_bytes")
    if data is not None:
        path = ctx.scratch / "storage.db"
        path.write_bytes(data)
        return path
    if not args.get("db"):
        raise AiosError("EINVAL", "sql_query: argument 'db' (a path) or 'storage' (a file of yours) is required")
    path = Path(str(args["db"])).expanduser()
    if not path.is_file():
        raise AiosError("ENOENT", f"sql_query: no database file at {path}")
    return path


def run_query(path: Path, sql: str, params: list | dict | None, time_limit: float,
              max_rows: int = MAX_ROWS) -> dict:
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=min(time_limit, 5.0))
    except sqlite3.Error as exc:
        raise AiosError("EIO", f"sql_query: cannot open {path}: {exc}") from None
    deadline = time.monotonic() + time_limit
    # returning non-zero from the handler interrupts the running statement
    con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        cur = con.execute(sql, params or [])
        rows = cur.fetchmany(max_rows + 1)
        cols = [d[0] for d in cur.description or []]
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise AiosError("ETIMEDOUT", f"sql_query: statement ran past its {time_limit:g} s limit") from None
        if "readonly" in str(exc) or "read-only" in str(exc):
            raise AiosError("EPERM", "sql_query: the database is opened read-only") from None
        raise AiosError("EINVAL", f"sql_query: {exc}") from None
    except sqlite3.Error as exc:
        raise AiosError("EINVAL", f"sql_query: {exc}") from None
    finally:
        con.close()
    truncated = len(rows) > max_rows
    return {"columns": cols, "rows": [list(r) for r in rows[:max_rows]], "truncated": truncated}


def sql_query(args: dict, ctx: ToolContext) -> dict:
    limit = float(args.get("time_limit", min(10.0, ctx.timeout)))
    return run_query(_db_path(args, ctx), str(args["query"]), args.get("params"), limit)


TOOLS = [
    Tool("sql_query",
         "Run one read-only SQL statement on an SQLite database (a path, or a file in your storage); "
         "returns columns and rows.",
         {"type": "object",
          "properties": {"query": {"type": "string", "description": "one SQL statement"},
                         "params": {"type": ["array", "object"], "description": "values for ? or :name"},
                         "db": {"type": "string", "description": "path of the database file"},
                         "storage": {"type": "string", "description": "path of the database in your storage"},
                         "time_limit": {"type": "number", "minimum": 0.01, "maximum": 300}},
          "required": ["query"], "additionalProperties": False},
         sql_query, category="database query", files=True, cpu_s=30, memory=1 << 30),
]
