"""The audit log: one entry point, redaction, append-only, and a hash chain that names the
first altered or removed event."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.core.management.color import no_style
from django.db import DatabaseError, connection, transaction

from apps.audit.models import AppendOnlyError, AuditEvent
from apps.audit.redaction import REDACTED, redact
from apps.audit.services import record, verify_chain

pytestmark = pytest.mark.django_db


def make_events(actor, n=3):
    return [
        record(
            actor=actor, action="test.thing.do", target=("thing", i, f"thing-{i}"), outcome="success", params={"n": i}
        )
        for i in range(n)
    ]


def tamper(sql, params):
    """Change the table behind the model's back, as an attacker with database access would."""
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute("SET session_replication_role = replica")  # disables the trigger for this session
            cur.execute(sql, params)
            cur.execute("SET session_replication_role = DEFAULT")
        else:
            triggers = sqlite_audit_triggers()
            for name in triggers:
                cur.execute(f"DROP TRIGGER {name}")
            cur.execute(sql, params)
            for text in triggers.values():
                cur.execute(text)


def sqlite_audit_triggers():
    with connection.cursor() as cur:
        cur.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_auditevent'")
        return dict(cur.fetchall())


def test_record_keeps_names_context_and_chain(operator):
    first, second = make_events(operator, 2)
    assert (first.actor_name, first.action, first.target_name, first.outcome) == (
        operator.username,
        "test.thing.do",
        "thing-0",
        "success",
    )
    assert second.prev_hash == first.hash
    assert verify_chain() == (2, None, "")


def test_secrets_are_redacted_in_params(operator):
    event = record(
        actor=operator,
        action="test.secret",
        outcome="success",
        params={
            "passphrase": "hunter2",
            "nested": {"api_token": "abc"},
            "size_gib": 4,
            "key_size": 512,
            "raw": b"\x00key",
        },
    )
    event.refresh_from_db()
    assert event.params == {
        "passphrase": REDACTED,
        "nested": {"api_token": REDACTED},
        "size_gib": 4,
        "key_size": 512,
        "raw": REDACTED,
    }
    assert redact({"password": "x"}) == {"password": REDACTED}


def test_the_model_refuses_updates_and_deletes(operator):
    (event,) = make_events(operator, 1)
    event.outcome = "failed"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(outcome="failed")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()


def test_the_database_refuses_updates_and_deletes(operator):
    (event,) = make_events(operator, 1)
    for sql in ("UPDATE audit_auditevent SET outcome = 'failed' WHERE id = %s", "DELETE FROM audit_auditevent"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            with connection.cursor() as cur:
                cur.execute(sql, [event.pk] if "%s" in sql else None)
    assert AuditEvent.objects.get(pk=event.pk).outcome == "success"


def test_django_flush_is_refused_on_sqlite_outside_the_test_engine(operator):
    if connection.vendor != "sqlite":
        pytest.skip(reason="SQLite only: PostgreSQL's flush is TRUNCATE, which row triggers do not see")
    from django.db.backends.sqlite3.operations import DatabaseOperations  # Django's own, as in production

    make_events(operator, 1)
    production_ops = DatabaseOperations(connection)
    with pytest.raises(DatabaseError, match="DELETE refused"):
        production_ops.execute_sql_flush(production_ops.sql_flush(no_style(), ["audit_auditevent"]))
    assert AuditEvent.objects.count() == 1


def test_the_test_engine_flush_empties_the_audit_table_and_keeps_its_triggers(operator):
    make_events(operator, 2)
    triggers = sqlite_audit_triggers() if connection.vendor == "sqlite" else None
    connection.ops.execute_sql_flush(connection.ops.sql_flush(no_style(), ["audit_auditevent"]))
    assert AuditEvent.objects.count() == 0
    if triggers is not None:
        assert sqlite_audit_triggers() == triggers
    (event,) = make_events(operator, 1)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])


def test_verify_names_the_first_altered_event(operator):
    events = make_events(operator, 4)
    tamper("UPDATE audit_auditevent SET outcome = 'denied' WHERE id = %s", [events[1].pk])
    checked, bad, reason = verify_chain()
    assert (checked, bad.pk) == (1, events[1].pk)
    assert "altered" in reason
    with pytest.raises(CommandError, match=f"event #{events[1].pk}"):
        call_command("audit_verify")


def test_verify_names_the_event_after_a_removed_one(operator):
    events = make_events(operator, 4)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [events[2].pk])
    checked, bad, reason = verify_chain()
    assert (checked, bad.pk) == (2, events[3].pk)
    assert "removed" in reason


def test_verify_notices_the_newest_events_removed(operator):
    events = make_events(operator, 3)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [events[2].pk])
    checked, bad, reason = verify_chain()
    assert bad is None and "newest events were removed" in reason


def test_audit_verify_command_reports_an_intact_chain(operator, capsys):
    make_events(operator, 3)
    call_command("audit_verify")
    assert "3 events verified" in capsys.readouterr().out


def test_events_outlive_their_actor(operator, django_user_model):
    (event,) = make_events(operator, 1)
    operator.delete()
    event = AuditEvent.objects.get(pk=event.pk)
    assert event.actor_name == "oscar-operator"
    assert verify_chain()[2] == ""


@pytest.mark.django_db
def test_audited_records_success_failure_and_a_single_denial(make_user):
    from django.core.exceptions import PermissionDenied

    from apps.accounts.models import Role
    from apps.audit.models import AuditEvent
    from apps.audit.services import audited
    from apps.core.errors import InvalidInput
    from apps.core.models import Host

    host = Host.objects.create(name="h-audited", uri="test:///default")
    admin, viewer = make_user(role=Role.ADMIN), make_user(role=Role.VIEWER)
    with audited(actor=admin, action="t.ok", target=host, params={"a": 1}) as ev:
        ev.params["b"] = 2
    with pytest.raises(InvalidInput):
        with audited(actor=admin, action="t.bad", target=host, atomic=True):
            Host.objects.filter(pk=host.pk).update(name="renamed")
            raise InvalidInput("no such size")
    ran = []
    with pytest.raises(PermissionDenied):
        with audited(actor=viewer, action="t.denied", target=host, perm="storage.settings"):
            ran.append(1)
    events = {e.action: e for e in AuditEvent.objects.filter(action__startswith="t.")}
    assert events["t.ok"].outcome == "success" and events["t.ok"].params == {"a": 1, "b": 2}
    assert (events["t.bad"].outcome, events["t.bad"].error) == ("failed", "no such size")
    assert Host.objects.get(pk=host.pk).name == "h-audited"  # atomic: the change rolled back
    assert events["t.denied"].outcome == "denied" and ran == []
    assert AuditEvent.objects.filter(action="t.denied").count() == 1


@pytest.mark.django_db
def test_audited_records_a_partial_batch_as_failed_and_leaves_a_job_to_record_its_end(make_user):
    """A batch that ends with some items failed (ev.error) is recorded as failed without
    raising; a block that enqueued a job (ev.recorded: job_enqueue wrote "requested") adds
    nothing, so the log holds one "requested" and, later, the job's end."""
    from apps.accounts.models import Role
    from apps.audit.models import AuditEvent
    from apps.audit.services import audited

    admin = make_user(role=Role.ADMIN)
    with audited(actor=admin, action="t.batch", params={"files": 3}) as ev:
        ev.params["restored"] = 2
        ev.error = "1 file(s) not restored"
    with audited(actor=admin, action="t.job") as ev:
        ev.recorded = True
    batch = AuditEvent.objects.get(action="t.batch")
    assert (batch.outcome, batch.error) == ("failed", "1 file(s) not restored")
    assert batch.params == {"files": 3, "restored": 2}
    assert not AuditEvent.objects.filter(action="t.job").exists()
