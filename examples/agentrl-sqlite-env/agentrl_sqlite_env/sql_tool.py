"""A read-only SQL query tool over an in-memory SQLite database.

The model's SQL is hostile until proven otherwise, so every query runs under three limits:
an authorizer that allows reading only (no writes, PRAGMA, ATTACH), a row limit, and a time
limit enforced by SQLite's progress handler, so an endless ``WITH RECURSIVE`` or a huge cross
join comes back as an error message, never a hang.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

SHOP_SQL = Path(__file__).with_name("shop.sql")

# What a query may do: read tables, call functions, recurse. Everything else is denied.
ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
# printf('%.*c', 500000000, 'x') fills its string in one step of SQLite's VM: seconds the
# progress handler cannot interrupt. The tasks never need it.
DENIED_FUNCTIONS = {"printf", "format"}


def _read_only(action, arg1, arg2, db_name, trigger):
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


class ShopDatabase:
    """The shop database, built in memory from ``shop.sql``; ``query`` is the tool."""

    def __init__(self, max_rows: int = 20, timeout_s: float = 1.0, max_chars: int = 2000):
        self.max_rows, self.timeout_s, self.max_chars = max_rows, timeout_s, max_chars
        # the collector calls tools from worker threads; one episode's calls never overlap
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.executescript(SHOP_SQL.read_text())
        self.conn.execute("PRAGMA query_only = ON")
        self.conn.set_authorizer(_read_only)  # after the PRAGMA: no query can turn it off
        if hasattr(self.conn, "setlimit"):  # Python >= 3.11: no 1 GB strings from repeat/concat
            self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000)
        self.schema = "\n".join(r[0] for r in self.conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table'"))

    def query(self, sql: str) -> str:
        """Run one read-only SQL query (SQLite dialect) on the shop database and return the rows.

        Args:
            sql: A single SELECT statement, e.g. SELECT name FROM customers WHERE city = 'Porto'.
        """
        deadline = time.monotonic() + self.timeout_s
        self.conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)  # nonzero: interrupt
        cursor = None
        try:
            cursor = self.conn.execute(sql)
            rows, columns = cursor.fetchmany(self.max_rows + 1), [d[0] for d in cursor.description or []]
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                return f"Error: the query ran longer than {self.timeout_s} s and was stopped"
            return f"Error: {e}"
        except (sqlite3.Error, sqlite3.Warning) as e:  # not authorized, two statements, ...
            return f"Error: {e}"
        finally:
            if cursor is not None:
                cursor.close()
            self.conn.set_progress_handler(None, 0)
        return self._format(columns, rows)

    def _format(self, columns: list[str], rows: list[tuple]) -> str:
        lines = [" | ".join(columns)] if columns else []
        lines += [" | ".join(str(v)[:200] for v in row) for row in rows[: self.max_rows]]
        if len(rows) > self.max_rows:
            lines.append(f"... (more than {self.max_rows} rows; add a LIMIT or aggregate)")
        text = "\n".join(lines) if rows else "\n".join(lines + ["(no rows)"])
        return text if len(text) <= self.max_chars else text[: self.max_chars] + "\n...[output truncated]"

    def close(self) -> None:
        self.conn.close()
