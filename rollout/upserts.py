"""The store's write statements, built once per table and reused by every group commit.

Building an ``INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n`` construct costs
SQLAlchemy a few milliseconds of Python (the ``excluded`` alias, one binary expression per
column), more than executing it on a batch of rows; rebuilt on each commit it held the GIL
against the request path. The constructs are immutable, so one per (dialect, table, key,
columns) serves every commit and every thread; SQLAlchemy's compiled cache does the rest.
The decision rows of /predict go one step further (``driver_insert_ignoring``).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Table


def insert(dialect: str, table: Table) -> Any:
    """Return the dialect's INSERT construct for ``table`` (it has ``on_conflict_*``)."""
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)
    from sqlalchemy.dialects import postgresql

    return postgresql.insert(table)


@functools.lru_cache(maxsize=128)
def insert_ignoring(
    dialect: str, table: Table, keys: tuple[str, ...] = (), returning: str | None = None
) -> Any:
    """``INSERT ... ON CONFLICT [(keys)] DO NOTHING [RETURNING returning]``, built once."""
    stmt = insert(dialect, table)
    if keys:
        stmt = stmt.on_conflict_do_nothing(index_elements=[table.c[k] for k in keys])
    else:
        stmt = stmt.on_conflict_do_nothing()
    return stmt.returning(table.c[returning]) if returning is not None else stmt


@functools.lru_cache(maxsize=128)
def adding(dialect: str, table: Table, keys: tuple[str, ...], names: tuple[str, ...]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET n = n + excluded.n`` for each of ``names``.

    An atomic increment of counters (never a read-modify-write), built once per column set.
    """
    stmt = insert(dialect, table)
    return stmt.on_conflict_do_update(
        index_elements=[table.c[k] for k in keys],
        set_={n: table.c[n] + stmt.excluded[n] for n in names},
    )


@functools.lru_cache(maxsize=32)
def driver_insert_ignoring(dialect: str, table: Table, columns: tuple[str, ...]) -> str:
    """``insert_ignoring``'s SQL, compiled once for the driver, with positional parameters.

    For ``Connection.exec_driver_sql(sql, [tuple, ...])`` (the DBAPI's ``executemany``, with
    SQLAlchemy's error wrapping): the decision row of every /predict skips the per-row
    dictionaries, the compiled-cache lookup and the bind processing (a few microseconds a
    row, held in the GIL the requests need). Tuples follow ``columns``; the values must be
    what the driver stores as is (str, float, bool, None: the table's types need no
    processing on SQLite or PostgreSQL).
    """
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import pysqlite

        target: Any = pysqlite.dialect()  # qmark: positional already
    else:
        from sqlalchemy.dialects.postgresql import psycopg

        target = psycopg.dialect(paramstyle="format")  # %s instead of %(name)s
    compiled = insert_ignoring(dialect, table).compile(dialect=target, column_keys=list(columns))
    if list(compiled.positiontup or ()) != list(columns):
        raise AssertionError(f"compiled parameters {compiled.positiontup} != {columns}")
    return str(compiled)
