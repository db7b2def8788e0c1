"""Statements on the session's own driver connection, for the metric hot paths.

Building, compiling and processing SQLAlchemy statements cost more than the database work of a
metric write or read (a 500-point flush spent most of its time in SQLAlchemy). These paths send
fixed SQL through the DBAPI cursor of the session's connection instead, inside the session's
transaction (``session.commit()`` still commits them). SQL is written with ``%s`` placeholders
(psycopg) and translated to ``?`` for sqlite3; PostgreSQL results are read in binary (bytea as
bytes, not hex text). Driver errors are raised as SQLAlchemy's (OperationalError, DataError, ...),
as any other query's are, so retries and the API's error mapping treat them alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session


class Statement(NamedTuple):
    """One statement of :meth:`Raw.batch`: ``params`` is a list of rows when ``many``."""

    sql: str
    params: Sequence[Any] = ()
    fetch: bool = False
    many: bool = False


class Raw:
    """The session's driver connection, with the SQL dialect it speaks."""

    def __init__(self, session: Session) -> None:
        self.connection = session.connection()
        self.postgres = self.connection.dialect.name == "postgresql"
        self.dbapi = self.connection.connection.dbapi_connection

    def sql(self, sql: str) -> str:
        return sql if self.postgres else sql.replace("%s", "?")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns its rowcount."""
        with self._cursor(sql, params) as cursor:
            cursor.execute(self.sql(sql), params)
            return cursor.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self._cursor(sql, rows) as cursor:
                cursor.executemany(self.sql(sql), rows)

    def batch(self, statements: Sequence[Statement]) -> list[Any]:
        """Run statements in order and return each one's result: its rows when ``fetch``, else
        its rowcount (for ``many``, None). On PostgreSQL they go out in one pipeline: one
        round trip for all of them, not one each (a round trip is most of a small write)."""
        if not self.postgres:
            return [self._one(statement) for statement in statements]
        sql = "; ".join(s.sql for s in statements)
        with self._errors(sql, None):
            with self.dbapi.pipeline():
                cursors = []
                for statement in statements:
                    cursor = self.dbapi.cursor(binary=True)
                    (cursor.executemany if statement.many else cursor.execute)(
                        statement.sql, statement.params
                    )
                    cursors.append(cursor)
            results = [
                c.fetchall() if s.fetch else (None if s.many else c.rowcount)
                for c, s in zip(cursors, statements, strict=True)
            ]
            for cursor in cursors:
                cursor.close()
            return results

    def _one(self, statement: Statement) -> Any:
        if statement.fetch:
            return self.fetchall(statement.sql, statement.params)
        if statement.many:
            return self.executemany(statement.sql, statement.params)
        return self.execute(statement.sql, statement.params)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._cursor(sql, params) as cursor:
            cursor.execute(self.sql(sql), params)
            return cursor.fetchall()

    @contextlib.contextmanager
    def _cursor(self, sql: str, params: Any) -> Iterator[Any]:
        cursor = self.dbapi.cursor(binary=True) if self.postgres else self.dbapi.cursor()
        try:
            with self._errors(sql, params):
                yield cursor
        finally:
            cursor.close()

    @contextlib.contextmanager
    def _errors(self, sql: str, params: Any) -> Iterator[None]:
        dbapi = self.connection.dialect.loaded_dbapi
        try:
            yield
        except dbapi.Error as exc:
            lost = self.connection.dialect.is_disconnect(exc, self.dbapi, None)
            if lost:
                self.connection.invalidate(exc)
            raise DBAPIError.instance(
                sql,
                params,
                exc,
                dbapi.Error,
                connection_invalidated=lost,
                dialect=self.connection.dialect,
            ) from exc
