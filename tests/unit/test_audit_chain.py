"""The keyed audit chain: the forgery of issue #11 (delete 45 events, re-link the rest with
plain SHA-256 or a wrong key, fix the head) is reported naming the first broken event;
incremental verification from a signed checkpoint; anchors outside the database that show a
truncated table; the re-key of the old unkeyed chain; the key file itself."""

import hashlib
import hmac
import json
import os
import secrets
import stat

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from apps.audit import chain
from apps.audit.models import AuditChainCheckpoint, AuditChainHead, AuditEvent
from apps.audit.services import record, verify_chain
from tests.unit.test_audit import make_events, tamper

pytestmark = pytest.mark.django_db


def relink(events_from, link):
    """The attacker's re-link: every event from `events_from` on gets a new prev_hash and
    hash computed with `link(prev, fields)`, and the head is set to the new last hash."""
    rows = list(chain.rows_after(AuditEvent, 0))
    prev = chain.GENESIS
    for row in rows:
        if row[0] >= events_from:
            new = link(prev, chain._row_fields(row))
            tamper("UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE id = %s", [prev, new, row[0]])
            prev = new
        else:
            prev = row[2]
    AuditChainHead.objects.filter(id=1).update(last_hash=prev, count=len(rows))


def sha256_link(prev, fields):
    return hashlib.sha256((prev + chain.canonical(fields)).encode()).hexdigest()


WRONG_KEY = secrets.token_bytes(32)


@pytest.mark.parametrize(
    "link, from_start",
    [(sha256_link, True), (sha256_link, False), (lambda p, f: chain.link(WRONG_KEY, p, f), False)],
    ids=["sha256-whole-chain", "sha256-from-the-gap", "wrong-hmac-key-from-the-gap"],
)
def test_the_forgery_of_the_issue_is_reported_naming_the_first_broken_event(operator, link, from_start):
    events = make_events(operator, 100)
    call_command("audit_verify")  # intact before
    tamper("DELETE FROM audit_auditevent WHERE id BETWEEN %s AND %s", [events[10].pk, events[54].pk])  # 45 events
    assert AuditEvent.objects.count() == 55
    first_relinked = events[0] if from_start else events[55]
    relink(first_relinked.pk, link)
    with pytest.raises(CommandError, match=rf"broken at event #{first_relinked.pk}\b.*altered"):
        call_command("audit_verify")
    checked, bad, _ = verify_chain()
    assert (checked, bad.pk) == (0 if from_start else 10, first_relinked.pk)


def test_the_key_lives_outside_the_database_as_a_private_file(operator, settings, tmp_path):
    make_events(operator, 1)
    path = chain.key_path()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    key = chain.chain_key()
    assert len(key) == 32
    for text in AuditEvent.objects.values_list("params", "error"):  # never in the log
        assert key.hex() not in json.dumps(text)
    # a key that vanished under an existing log is not silently replaced
    settings.AUDIT_CHAIN_KEY_PATH = tmp_path / "audit" / "chain.key"
    with pytest.raises(chain.ChainKeyMissing, match="restore it"):
        record(actor=operator, action="test.thing.do", outcome="success")
    with pytest.raises(chain.ChainKeyMissing):
        verify_chain()
    with pytest.raises(chain.ChainKeyMissing):
        chain.verify_incremental()
    assert not settings.AUDIT_CHAIN_KEY_PATH.exists()


# ------------------------------------------------------------------ incremental verification


def test_incremental_verification_reads_only_the_new_events_and_moves_its_checkpoint(operator, client, auditor):
    events = make_events(operator, 5)
    assert chain.chain_check() is True
    cp = AuditChainCheckpoint.objects.get(id=1)
    assert (cp.last_id, cp.checked) == (events[-1].pk, 5)
    verify_event = AuditEvent.objects.get(action=chain.VERIFY_ACTION)
    assert verify_event.params["from_id"] == 0 and verify_event.params["checked"] == 5

    more = make_events(operator, 3)
    result, info = chain.verify_incremental()
    assert result.intact
    assert info["from_id"] == events[-1].pk  # started at the checkpoint
    assert info["checked"] == 4  # the verification event and the 3 new ones
    cp.refresh_from_db()
    assert (cp.last_id, cp.checked) == (more[-1].pk, 9)

    client.force_login(auditor)
    page = client.get(reverse("audit:events")).content.decode()
    assert "Chain intact" in page and f"up to event #{more[-1].pk}" in page


def test_a_break_after_the_checkpoint_is_alerted_once_recorded_and_shown_in_red(
    operator, client, auditor, settings, django_capture_on_commit_callbacks
):
    settings.NOTIFY_WEBHOOK_URL = "http://127.0.0.1:9/hook"
    make_events(operator, 3)
    assert chain.chain_check() is True
    later = make_events(operator, 3)
    tamper("UPDATE audit_auditevent SET target_name = 'nothing' WHERE id = %s", [later[1].pk])
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert chain.chain_check() is False
        assert chain.chain_check() is False  # the same break again: recorded, not alerted again
    assert len(sent) == 1
    failed = AuditEvent.objects.filter(action=chain.VERIFY_ACTION, outcome="failed")
    assert failed.count() == 2
    assert f"event #{later[1].pk}" in failed.first().error
    cp = AuditChainCheckpoint.objects.get(id=1)
    assert cp.broken_event_id == later[1].pk and cp.last_id == later[0].pk  # the intact prefix
    client.force_login(auditor)
    page = client.get(reverse("audit:events")).content.decode()
    assert "Chain broken" in page and "level-critical" in page and f"event #{later[1].pk}" in page


def test_a_checkpoint_moved_forward_without_the_key_is_not_trusted(operator):
    events = make_events(operator, 6)
    assert chain.chain_check() is True
    tamper("UPDATE audit_auditevent SET outcome = 'denied' WHERE id = %s", [events[2].pk])
    newest = AuditEvent.objects.order_by("-id").first()
    AuditChainCheckpoint.objects.filter(id=1).update(last_id=newest.pk, last_hash=newest.hash, checked=99)
    result, info = chain.verify_incremental()
    assert "signature does not match" in info["checkpoint"]
    assert result.bad_id == events[2].pk


def test_an_edit_before_the_checkpoint_is_left_to_the_full_verification(operator):
    """By design the incremental run does not re-read verified events (its cost does not grow
    with the log); `manage.py audit_verify` (full) still finds such an edit."""
    events = make_events(operator, 4)
    assert chain.chain_check() is True
    tamper("UPDATE audit_auditevent SET outcome = 'denied' WHERE id = %s", [events[1].pk])
    assert chain.verify_incremental()[0].intact
    with pytest.raises(CommandError, match=f"event #{events[1].pk}"):
        call_command("audit_verify")


def test_the_checkpoint_event_removed_is_reported(operator):
    events = make_events(operator, 3)
    assert chain.chain_check() is True
    verify_event = AuditEvent.objects.get(action=chain.VERIFY_ACTION)
    tamper("DELETE FROM audit_auditevent WHERE id IN (%s, %s)", [events[2].pk, verify_event.pk])
    result, _ = chain.verify_incremental()
    assert result.bad_id == events[2].pk and "removed or altered" in result.reason


# ------------------------------------------------------------------ anchors


@pytest.fixture
def anchors(settings, tmp_path):
    settings.AUDIT_ANCHOR_DIR = str(tmp_path / "anchors")
    return tmp_path / "anchors"


def test_a_verified_head_is_anchored_in_a_signed_private_file(operator, anchors):
    events = make_events(operator, 3)
    assert chain.chain_check() is True
    path = anchors / chain.ANCHOR_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400 and stat.S_IMODE(os.stat(anchors).st_mode) == 0o700
    anchor = chain.read_anchor()
    assert (anchor["event_id"], anchor["hash"]) == (events[-1].pk, events[-1].hash)
    assert AuditChainCheckpoint.objects.get(id=1).anchored_id == events[-1].pk


@pytest.mark.parametrize("keep", [3, 0], ids=["newest-events-deleted", "all-events-deleted"])
def test_truncating_the_table_is_detected_against_the_anchor(operator, anchors, keep):
    events = make_events(operator, 6)
    assert chain.chain_check() is True  # anchors events[-1]... and records its own event
    anchored = chain.read_anchor()["event_id"]
    tamper("DELETE FROM audit_auditevent WHERE id > %s", [events[keep - 1].pk if keep else 0])
    # the attacker also sets the head (and the checkpoint) to what is left
    last = AuditEvent.objects.order_by("-id").first()
    AuditChainHead.objects.filter(id=1).update(last_hash=last.hash if last else chain.GENESIS)
    AuditChainCheckpoint.objects.all().delete()
    with pytest.raises(CommandError, match=rf"event #{anchored}\b.*truncated"):
        call_command("audit_verify")
    assert chain.chain_check() is False
    assert AuditChainCheckpoint.objects.get(id=1).broken_event_id == anchored


def test_a_rewritten_anchor_file_is_refused(operator, anchors):
    make_events(operator, 2)
    assert chain.chain_check() is True
    path = anchors / chain.ANCHOR_FILE
    document = json.loads(path.read_bytes())
    document["event_id"] = 1
    os.chmod(path, 0o600)
    path.write_text(json.dumps(document))
    os.chmod(path, 0o400)
    with pytest.raises(CommandError, match="not signed with the chain key"):
        call_command("audit_verify")


# ------------------------------------------------------------------ re-key of the unkeyed chain


def test_the_old_unkeyed_chain_is_verified_then_rekeyed(operator):
    events = make_events(operator, 4)
    relink(events[0].pk, sha256_link)  # as the log was written before the chain was keyed
    assert verify_chain()[1].pk == events[0].pk
    assert chain.rekey_legacy(AuditEvent, AuditChainHead, connection) == 4
    assert verify_chain() == (4, None, "")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():  # the triggers are back
        with connection.cursor() as cur:
            cur.execute("UPDATE audit_auditevent SET outcome = 'failed' WHERE id = %s", [events[3].pk])


def test_a_broken_unkeyed_chain_is_not_rekeyed(operator):
    events = make_events(operator, 4)
    relink(events[0].pk, sha256_link)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [events[1].pk])
    with pytest.raises(RuntimeError, match=f"event #{events[2].pk}"):
        chain.rekey_legacy(AuditEvent, AuditChainHead, connection)
    assert not hmac.compare_digest(AuditEvent.objects.get(pk=events[3].pk).hash, events[3].hash)


def test_beat_runs_the_verification_and_the_forwarding_tasks(operator, settings):
    from django.utils.module_loading import import_string

    schedule = settings.CELERY_BEAT_SCHEDULE
    assert schedule["audit-chain-verify"]["schedule"] == float(settings.AUDIT_VERIFY_INTERVAL)
    assert schedule["audit-forward"]["schedule"] == float(settings.AUDIT_SYSLOG_INTERVAL)
    make_events(operator, 2)
    verify = import_string(schedule["audit-chain-verify"]["task"])
    assert verify.apply().get() is True  # the task body, run here
    assert AuditChainCheckpoint.objects.get(id=1).checked == 2
    settings.AUDIT_SYSLOG_HOST = ""
    assert import_string(schedule["audit-forward"]["task"]).apply().get()["enabled"] is False

