"""Administrators acknowledge the security training items: recorded per user, audited,
shown in the access review, and the posture check follows them."""

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.monitoring import posture, training
from apps.monitoring.models import Status, TrainingAcknowledgement


def training_check():
    (f,) = posture.evaluate([c for c in posture.CHECKS if c.key == "training.admins"])
    return f


@pytest.mark.django_db
def test_an_admin_acknowledges_every_item_and_the_access_review_shows_it(client, admin, auditor):
    assert training_check().status == Status.FAIL and admin.username in training_check().evidence
    client.force_login(admin)
    for item in training.ITEMS:
        response = client.post(reverse("monitoring:training_acknowledge"), {"item": item}, HTTP_HX_REQUEST="true")
        assert response.status_code == 200
    assert response.content.decode().count('data-testid="acknowledged"') == len(training.ITEMS)
    assert training_check().status == Status.PASS
    assert AuditEvent.objects.filter(action="monitoring.training.acknowledge", outcome="success").count() == len(
        training.ITEMS
    )
    client.force_login(auditor)
    review = client.get(reverse("reviews:report")).content.decode()
    row = review[review.index(f'data-user="{admin.username}"'):]
    assert f'data-testid="training">{len(training.ITEMS)}/{len(training.ITEMS)}<' in row[: row.index("</tr>")]


@pytest.mark.django_db
def test_an_unknown_item_is_refused_and_audited(client, admin):
    client.force_login(admin)
    response = client.post(reverse("monitoring:training_acknowledge"), {"item": "made-up"})
    assert response.status_code == 400
    assert not TrainingAcknowledgement.objects.exists()
    event = AuditEvent.objects.get(action="monitoring.training.acknowledge")
    assert event.outcome == "failed" and "no training item" in event.error
