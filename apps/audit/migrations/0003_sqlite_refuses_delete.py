"""SQLite refuses DELETE of audit events too, as PostgreSQL's trigger already does.

The test suite empties tables between transactional tests with Django's flush: on
PostgreSQL that is TRUNCATE, which row triggers do not see; on SQLite the test settings use
a test-only database engine (hypervisor_web/sqlite_test) whose flush lifts the triggers
inside its own transaction. Production has no such path."""

from django.db import migrations

SQLITE_UP = """
CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_auditevent
BEGIN SELECT RAISE(ABORT, 'audit events are append-only (DELETE refused)'); END;
"""
SQLITE_DOWN = "DROP TRIGGER IF EXISTS audit_event_no_delete;"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(SQLITE_UP)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(SQLITE_DOWN)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only_triggers")]
    operations = [migrations.RunPython(forwards, backwards)]
