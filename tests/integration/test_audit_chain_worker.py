"""The Celery worker and the web process share the audit chain key (one file outside the
database): what one writes, the other verifies."""

import time

import pytest

from apps.audit import chain
from apps.audit.models import AuditChainCheckpoint, AuditEvent
from apps.audit.services import verify_chain
from tests.unit.test_audit import make_events


@pytest.mark.worker
def test_the_worker_reads_the_same_key_and_verifies_what_the_web_wrote(worker, operator):
    events = make_events(operator, 3)  # written here, as the web process would
    from apps.audit.tasks import audit_chain_verify

    audit_chain_verify.delay()  # verified in the worker process (no result backend: read its rows)
    deadline = time.monotonic() + 60
    while not AuditEvent.objects.filter(action=chain.VERIFY_ACTION).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert AuditEvent.objects.get(action=chain.VERIFY_ACTION).outcome == "success"
    cp = AuditChainCheckpoint.objects.get(id=1)
    assert (cp.last_id, cp.checked) == (events[-1].pk, 3)
    assert verify_chain() == (4, None, "")  # and its own audit event links on here
