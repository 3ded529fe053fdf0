"""Review campaigns: an admin starts one, reviewers decide keep or revoke with a comment
(never on their own access), closing applies the revocations through the accounts service and
freezes the report with its SHA-256; CSV and PDF exports; past campaigns stay readable."""

import hashlib
import io

import pytest
from django.core.exceptions import PermissionDenied
from django.urls import reverse
from pypdf import PdfReader

from apps.accounts.models import Role, RoleAssignment
from apps.audit.models import AuditEvent
from apps.core.errors import Conflict, InvalidInput
from apps.reviews import services
from apps.reviews.models import ReviewCampaign, ReviewItem
from tests.conftest import reauthenticate

pytestmark = pytest.mark.django_db


@pytest.fixture
def second_admin(make_user):
    return make_user("bob-admin", Role.ADMIN)


def _item(campaign, user):
    return campaign.items.get(user=user)


def test_a_campaign_revokes_what_reviewers_decided_and_freezes_its_report(
    client, admin, second_admin, operator, viewer
):
    campaign = services.campaign_start(actor=admin, name="Q4 review", users=[operator, viewer, admin])
    assert campaign.items.count() == 3
    assert campaign.subjects == f"{admin.username}, {operator.username}, {viewer.username}"
    services.campaign_decide(actor=admin, item=_item(campaign, operator), decision="revoke", comment="left the team")
    services.campaign_decide(actor=admin, item=_item(campaign, viewer), decision="keep", comment="=still on call")
    services.campaign_decide(actor=second_admin, item=_item(campaign, admin), decision="keep", comment="lead")

    client.force_login(admin)
    reauthenticate(client)
    response = client.post(reverse("reviews:campaign_close", args=[campaign.pk]), {"confirm": "Q4 review"})
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.state == "closed" and campaign.closed_by == admin.username
    assert not RoleAssignment.objects.filter(user=operator).exists()
    assert RoleAssignment.objects.filter(user=viewer).exists()
    assert _item(campaign, operator).applied == "revoked"
    revoke = AuditEvent.objects.get(action="accounts.role.revoke")
    assert (revoke.outcome, revoke.target_name, revoke.actor_name) == ("success", operator.username, admin.username)
    close = AuditEvent.objects.get(action="reviews.campaign.close")
    assert close.params["report_sha256"] == campaign.report_sha256
    assert (close.params["revoked"], close.params["kept"]) == (1, 2)

    csv_response = client.get(reverse("reviews:campaign_export", args=[campaign.pk, "csv"]))
    body = csv_response.content
    assert hashlib.sha256(body).hexdigest() == campaign.report_sha256 == csv_response["X-Report-SHA256"]
    assert b"'=still on call" in body and b"left the team" in body

    pdf = client.get(reverse("reviews:campaign_export", args=[campaign.pk, "pdf"]))
    assert pdf["Content-Type"] == "application/pdf"
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Q4 review" in text and operator.username in text and "left the team" in text
    assert campaign.report_sha256 in text.replace("\n", "")


def test_nobody_reviews_their_own_access(client, admin, operator):
    campaign = services.campaign_start(actor=admin, name="self", users=[admin, operator])
    own = _item(campaign, admin)
    client.force_login(admin)
    response = client.post(reverse("reviews:campaign_decide", args=[campaign.pk, own.pk]),
                           {"decision": "keep", "comment": "trust me"})  # fmt: skip
    assert response.status_code == 403
    own.refresh_from_db()
    assert own.decision == ""
    event = AuditEvent.objects.get(action="reviews.campaign.decide")
    assert event.outcome == "denied" and "own access" in event.error


def test_a_decision_submitted_twice_changes_nothing(admin, second_admin, operator):
    campaign = services.campaign_start(actor=admin, name="twice", users=[operator])
    item = _item(campaign, operator)
    services.campaign_decide(actor=admin, item=item, decision="keep", comment="needed")
    with pytest.raises(Conflict, match="already decided"):
        services.campaign_decide(actor=second_admin, item=item, decision="revoke", comment="no")
    item.refresh_from_db()
    assert (item.decision, item.decided_by, item.comment) == ("keep", admin.username, "needed")
    outcomes = list(AuditEvent.objects.filter(action="reviews.campaign.decide").values_list("outcome", flat=True))
    assert sorted(outcomes) == ["failed", "success"]


def test_bad_decisions_are_refused_with_a_message(client, admin, operator):
    campaign = services.campaign_start(actor=admin, name="bad", users=[operator])
    item = _item(campaign, operator)
    with pytest.raises(InvalidInput, match="comment"):
        services.campaign_decide(actor=admin, item=item, decision="revoke", comment="  ")
    client.force_login(admin)
    response = client.post(reverse("reviews:campaign_decide", args=[campaign.pk, item.pk]),
                           {"decision": "delete-everything", "comment": "x"})  # fmt: skip
    assert response.status_code == 400
    item.refresh_from_db()
    assert item.decision == ""
    assert AuditEvent.objects.filter(action="reviews.campaign.decide", outcome="failed").count() == 2


def test_a_campaign_closed_twice_changes_nothing(admin, operator):
    campaign = services.campaign_start(actor=admin, name="once", users=[operator])
    services.campaign_close(actor=admin, campaign=campaign)
    digest = ReviewCampaign.objects.get(pk=campaign.pk).report_sha256
    with pytest.raises(Conflict, match="already closed"):
        services.campaign_close(actor=admin, campaign=campaign)
    with pytest.raises(Conflict, match="closed"):
        services.campaign_decide(actor=admin, item=_item(campaign, operator), decision="revoke", comment="late")
    campaign.refresh_from_db()
    assert campaign.report_sha256 == digest and _item(campaign, operator).applied == "not reviewed (kept)"
    assert RoleAssignment.objects.filter(user=operator).exists()


def test_closing_needs_the_typed_name_and_a_recent_reauthentication(client, admin, operator):
    campaign = services.campaign_start(actor=admin, name="typed", users=[operator])
    url = reverse("reviews:campaign_close", args=[campaign.pk])
    client.force_login(admin)
    assert client.post(url, {"confirm": "typed"})["Location"].startswith(reverse("accounts:reauth"))
    reauthenticate(client)
    assert client.post(url, {"confirm": "wrong"}).status_code == 400
    assert ReviewCampaign.objects.get(pk=campaign.pk).state == "open"


def test_a_revocation_that_cannot_apply_is_reported_not_hidden(admin, second_admin):
    """The last admin's role is not revoked (the accounts service refuses); the report says so."""
    from apps.accounts.services import user_set_active

    campaign = services.campaign_start(actor=admin, name="last", users=[admin])
    services.campaign_decide(actor=second_admin, item=_item(campaign, admin), decision="revoke", comment="x")
    user_set_active(actor=admin, user=second_admin, active=False)  # admin is now the last active admin
    services.campaign_close(actor=admin, campaign=campaign)
    assert _item(campaign, admin).applied.startswith("not revoked: This is the last active admin")
    assert RoleAssignment.objects.filter(user=admin, role=Role.ADMIN).exists()


def test_auditors_read_campaigns_and_change_nothing(client, admin, auditor, operator):
    campaign = services.campaign_start(actor=admin, name="read-only", users=[operator])
    services.campaign_close(actor=admin, campaign=campaign)
    client.force_login(auditor)
    assert client.get(reverse("reviews:campaigns")).status_code == 200
    assert "read-only" in client.get(reverse("reviews:campaign", args=[campaign.pk])).content.decode()
    assert client.get(reverse("reviews:campaign_export", args=[campaign.pk, "csv"])).status_code == 200
    assert client.post(reverse("reviews:campaign_start"), {"name": "mine"}).status_code == 403
    item = _item(campaign, operator)
    assert client.post(reverse("reviews:campaign_decide", args=[campaign.pk, item.pk]),
                       {"decision": "revoke", "comment": "x"}).status_code == 403  # fmt: skip
    with pytest.raises(PermissionDenied):
        services.campaign_start(actor=auditor, name="sneaky")
    assert ReviewCampaign.objects.count() == 1


def test_past_campaigns_stay_readable_after_users_are_gone(client, admin, auditor, make_user):
    leaver = make_user("lee-leaver", Role.OPERATOR)
    campaign = services.campaign_start(actor=admin, name="history", users=[leaver])
    services.campaign_decide(actor=admin, item=_item(campaign, leaver), decision="revoke", comment="left")
    services.campaign_close(actor=admin, campaign=campaign)
    leaver.delete()
    client.force_login(auditor)
    page = client.get(reverse("reviews:campaign", args=[campaign.pk])).content.decode()
    assert "lee-leaver" in page and "revoked" in page
    assert ReviewItem.objects.get(campaign=campaign).user is None


def test_an_altered_frozen_report_is_refused_at_export(client, admin, auditor, operator):
    campaign = services.campaign_start(actor=admin, name="tamper", users=[operator])
    services.campaign_close(actor=admin, campaign=campaign)
    ReviewCampaign.objects.filter(pk=campaign.pk).update(report_csv="user\r\nnobody\r\n")
    client.force_login(auditor)
    response = client.get(reverse("reviews:campaign_export", args=[campaign.pk, "csv"]))
    assert response.status_code == 409 and b"SHA-256" in response.content
    assert client.get(reverse("reviews:campaign_export", args=[campaign.pk, "xls"])).status_code == 404


def test_the_start_form_refuses_bad_input(client, admin):
    client.force_login(admin)
    response = client.post(reverse("reviews:campaign_start"), {"name": "", "users": ["no-such-user"]})
    assert response.status_code == 400 and not ReviewCampaign.objects.exists()
    assert AuditEvent.objects.get(action="reviews.campaign.start").outcome == "failed"
    response = client.post(reverse("reviews:campaign_start"), {"name": "all of them"})
    campaign = ReviewCampaign.objects.get()
    assert response["Location"] == reverse("reviews:campaign", args=[campaign.pk])
    assert campaign.subjects == "all users" and campaign.items.count() == RoleAssignment.objects.count()
