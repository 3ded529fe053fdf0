"""The incident response plan: admins write it (the guide's four steps prefilled) and record
its review, audited; others read it; the posture check follows it."""

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.monitoring import posture, services
from apps.monitoring.models import IncidentResponsePlan, Status

PLAN = {"detect": "watch alerts", "contain": "quarantine", "recover": "restore", "review": "write it up",
        "contacts": "on-call: +1 555 0100"}  # fmt: skip


def plan_check():
    (f,) = posture.evaluate([c for c in posture.CHECKS if c.key == "incident.plan"])
    return f


@pytest.mark.django_db
def test_an_admin_writes_and_reviews_the_plan_and_the_check_follows(client, admin):
    assert plan_check().status == Status.FAIL
    client.force_login(admin)
    page = client.get(reverse("monitoring:incident_plan")).content.decode()
    assert len(services.PLAN_TEMPLATE) == 4  # the guide's four steps, each prefilled
    for step, text in services.PLAN_TEMPLATE.items():
        assert f'name="{step}"' in page and text[:40] in page, step
    response = client.post(reverse("monitoring:incident_plan_save"), {**PLAN, "version": 0})
    assert response.status_code == 302
    plan = IncidentResponsePlan.objects.get()
    assert (plan.version, plan.contain, plan.updated_by_name) == (1, "quarantine", admin.username)
    assert plan_check().status == Status.FAIL and "never reviewed" in plan_check().evidence
    client.post(reverse("monitoring:incident_plan_review"))
    assert plan_check().status == Status.PASS
    actions = list(AuditEvent.objects.filter(action__startswith="monitoring.incident_plan").order_by("id").values_list(
        "action", "outcome", "params__version"))  # fmt: skip
    assert actions == [
        ("monitoring.incident_plan.save", "success", 1), ("monitoring.incident_plan.review", "success", 1),
    ]  # fmt: skip


@pytest.mark.django_db
def test_a_stale_version_or_an_empty_step_changes_nothing_and_is_audited(client, admin):
    client.force_login(admin)
    client.post(reverse("monitoring:incident_plan_save"), {**PLAN, "version": 0})
    response = client.post(reverse("monitoring:incident_plan_save"), {**PLAN, "contain": "changed", "version": 0})
    assert response.status_code == 409
    response = client.post(reverse("monitoring:incident_plan_save"), {**PLAN, "detect": "  ", "version": 1})
    assert response.status_code == 400 and "This field is required" in response.content.decode()
    assert IncidentResponsePlan.objects.get().contain == "quarantine"
    failed = AuditEvent.objects.filter(action="monitoring.incident_plan.save", outcome="failed")
    assert failed.count() == 2 and "changed meanwhile" in failed.order_by("id").first().error


@pytest.mark.django_db
def test_others_read_the_plan_but_cannot_change_it(client, admin, auditor):
    services.incident_plan_save(actor=admin, expected_version=0, **PLAN)
    client.force_login(auditor)
    page = client.get(reverse("monitoring:incident_plan")).content.decode()
    assert "on-call: +1 555 0100" in page and 'data-testid="plan-save"' not in page
    assert client.post(reverse("monitoring:incident_plan_save"), {**PLAN, "version": 1}).status_code == 403
    assert client.post(reverse("monitoring:incident_plan_review")).status_code == 403
    assert IncidentResponsePlan.objects.get().reviewed_at is None
