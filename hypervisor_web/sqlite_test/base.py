"""Test-only SQLite engine (hypervisor_web.settings.test): Django's SQLite backend whose
flush also empties append-only tables.

pytest-django empties every table after a transactional test with Django's flush. On
PostgreSQL that is TRUNCATE, which row triggers do not see; on SQLite it is DELETE, which
the audit log's triggers refuse. This flush drops the triggers of the tables it empties
and creates them again from their own SQL, all in flush's single transaction, so no other
connection ever sees a table without its triggers. Never used outside the test settings."""

from itertools import chain

from django.db.backends.sqlite3 import base, operations


class DatabaseOperations(operations.DatabaseOperations):
    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        sql = super().sql_flush(style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        if not sql:
            return sql
        if allow_cascade:  # the same tables Django's flush empties
            tables = set(chain.from_iterable(self._references_graph(table) for table in tables))
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'")
            triggers = [(name, text) for name, table, text in cursor.fetchall() if table in set(tables)]
        drops = [f"DROP TRIGGER {self.quote_name(name)};" for name, _ in triggers]
        creates = [f"{text};" for _, text in triggers]
        return drops + sql + creates


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations
