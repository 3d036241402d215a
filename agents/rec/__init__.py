"""The Rec Agent of the paper's evaluation: restaurant recommendations.

1. gather preferences: the task is written to the agent's memory (mem_write) and its
   preferences read back (mem_read), and the model states what they ask for (llm_chat 1);
2. query the bundled dataset (restaurants.sql, built into an SQLite file at first use)
   through the `sql_query` tool, or straight through sqlite3 if the tool is not served
   (said on stderr);
3. the model recommends from the rows it was given (llm_chat 2).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

from libaios.agent import Agent, Manifest
from libaios.errors import AiosError

SQL = Path(__file__).with_name("restaurants.sql")
COLUMNS = ("name", "cuisine", "city", "rating", "price")


def database() -> Path:
    """The SQLite file built from restaurants.sql (rebuilt when the .sql changes)."""
    text = SQL.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"aios-rec-{digest}.db"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        con = sqlite3.connect(tmp)
        con.executescript(text)
        con.commit()
        con.close()
        os.replace(tmp, path)  # atomic: concurrent agents never see a half-built file
    return path


def known(column: str) -> list[str]:
    con = sqlite3.connect(f"file:{database()}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute(f"SELECT DISTINCT {column} FROM restaurants ORDER BY 1")]
    finally:
        con.close()


def match(text: str, options: list[str]) -> str | None:
    low = text.lower()
    hits = [o for o in options if o.lower() in low]
    return max(hits, key=len) if hits else None


def query_sql(cuisine: str | None, city: str | None, limit: int = 5) -> tuple[str, list]:
    where, params = [], []
    if cuisine:
        where.append("cuisine = ?")
        params.append(cuisine)
    if city:
        where.append("city = ?")
        params.append(city)
    sql = (f"SELECT {', '.join(COLUMNS)} FROM restaurants" + (f" WHERE {' AND '.join(where)}" if where else "")
           + f" ORDER BY rating DESC, price ASC LIMIT {int(limit)}")
    return sql, params


class RecAgent(Agent):
    manifest = Manifest(name="rec", description="recommends restaurants from a small dataset",
                        tools=["sql_query"], max_tokens=64)

    def preferences(self, task: str) -> str:
        self.sys.mem_write(task, key=None, role="user", metadata={"kind": "preference"})
        records = self.sys.mem_read(last=5) or []
        # memory may hold earlier runs (mem_restore of a persisted one): the same preference twice is one
        seen = list(dict.fromkeys(_content(r).strip() for r in records if _content(r).strip()))
        return " ".join(seen) or task

    def rows(self, cuisine: str | None, city: str | None) -> list[dict]:
        sql, params = query_sql(cuisine, city)
        db = str(database())
        try:
            out = self.tool("sql_query", {"query": sql, "params": params, "db": db})
            return _as_rows(out)
        except AiosError as exc:
            print(f"rec: sql_query tool unavailable ({exc.code}: {exc.message}); querying sqlite directly",
                  file=sys.stderr)
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return [dict(zip(COLUMNS, r, strict=False)) for r in con.execute(sql, params)]
        finally:
            con.close()

    def run(self, task: str) -> str:
        prefs = self.preferences(task)
        wants = self.chat([
            {"role": "system", "content": "You summarise dining preferences in one short line."},
            {"role": "user", "content": f"What cuisine and city does this person want? {prefs}"},
        ], max_tokens=24)
        self.log("preferences gathered")
        # the dataset's own vocabulary decides the query: the small model only has to echo it
        cuisine = match(prefs, known("cuisine")) or match(wants, known("cuisine"))
        city = match(prefs, known("city")) or match(wants, known("city"))
        rows = self.rows(cuisine, city) or self.rows(cuisine, None) or self.rows(None, None)
        listing = "\n".join(f"- {r['name']} ({r['cuisine']}, {r['city']}, rating {r['rating']}, "
                            f"{'$' * int(r['price'])})" for r in rows)
        rec = self.chat([
            {"role": "system", "content": "You recommend restaurants, only from the list given."},
            {"role": "user", "content": f"Preferences: {prefs}\nRestaurants:\n{listing}\n"
                                        "Recommend the best two in one or two sentences."},
        ])
        self.log(f"recommended from {len(rows)} rows")
        return f"{rec.strip()}\n\nCandidates ({cuisine or 'any cuisine'}, {city or 'any city'}):\n{listing}"

    @classmethod
    def default_task(cls) -> str:
        return "I love spicy Thai food and I live in Boston."


def _content(record: Any) -> str:
    if isinstance(record, dict):
        c = record.get("content", "")
        return c.decode(errors="replace") if isinstance(c, bytes) else str(c)
    return str(record)


def _as_rows(out: Any) -> list[dict]:
    """The tool's answer as dicts, whether it gives {"columns","rows"}, a list of dicts or lists."""
    if isinstance(out, dict):
        cols = out.get("columns") or list(COLUMNS)
        return [r if isinstance(r, dict) else dict(zip(cols, r, strict=False)) for r in out.get("rows", [])]
    if isinstance(out, list):
        return [r if isinstance(r, dict) else dict(zip(COLUMNS, r, strict=False)) for r in out]
    return []
