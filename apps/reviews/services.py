"""Access review campaigns and the dormant-account policy. Each function takes the acting
user, checks the permission, and audits what became of the action; revocations go through
the accounts service (audited there, and the user's sessions end)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Role, RoleAssignment
from apps.accounts.permissions import authorize
from apps.audit.services import audited, record
from apps.core.errors import Conflict, InvalidInput, PortalError

from . import exports
from .models import ReviewCampaign, ReviewItem

User = get_user_model()


class SelfReview(PortalError):
    """Nobody reviews their own access."""

    status = 403


def campaign_start(*, actor, name: str, users=None) -> ReviewCampaign:
    """Start a campaign over `users` (None: every user): each of their role assignments,
    copied now, waits for a keep or revoke decision."""
    action = "reviews.campaign.start"
    authorize(actor, "access_review.manage", action=action, target=("campaign", "", name))
    subjects = "all users" if not users else ", ".join(sorted(u.username for u in users))[:400]
    with audited(actor=actor, action=action, target=("campaign", "", name), params={"subjects": subjects},
                 atomic=True) as ev:  # fmt: skip
        name = (name or "").strip()
        if not name:
            raise InvalidInput("Give the campaign a name.")
        assignments = RoleAssignment.objects.select_related("user", "host", "vm")
        if users:
            assignments = assignments.filter(user__in=users)
        assignments = list(assignments)
        if not assignments:
            raise InvalidInput("These users hold no roles: there is nothing to review.")
        campaign = ReviewCampaign.objects.create(name=name[:120], started_by=actor.username, subjects=subjects)
        ReviewItem.objects.bulk_create(
            ReviewItem(campaign=campaign, assignment=a, user=a.user, username=a.user.username, role=a.role,
                       scope_label=a.scope_label[:200])  # fmt: skip
            for a in assignments
        )
        ev.target = campaign
        ev.params["items"] = len(assignments)
    return campaign


def campaign_decide(*, actor, item: ReviewItem, decision: str, comment: str) -> ReviewItem:
    """A reviewer's keep or revoke for one assignment, with a comment. Refused: one's own
    access (audited as denied), a closed campaign, an item already decided (nothing changes)."""
    action = "reviews.campaign.decide"
    campaign = item.campaign
    params = {"item": item.pk, "user": item.username, "role": item.role, "scope": item.scope_label,
              "decision": decision}  # fmt: skip
    authorize(actor, "access_review.manage", action=action, target=campaign)
    if item.user_id is not None and item.user_id == actor.pk:
        message = "Nobody reviews their own access: another reviewer decides this one."
        record(actor=actor, action=action, target=campaign, outcome="denied", params=params, error=message)
        raise SelfReview(message)
    with audited(actor=actor, action=action, target=campaign, params=params, atomic=True):
        campaign = ReviewCampaign.objects.select_for_update().get(pk=campaign.pk)  # serialised with closing
        item = ReviewItem.objects.select_for_update().get(pk=item.pk)
        if not campaign.is_open:
            raise Conflict(f"The campaign {campaign.name!r} is closed: its decisions can no longer change.")
        if item.decision:
            raise Conflict(
                f"This assignment was already decided ({item.decision} by {item.decided_by} at "
                f"{item.decided_at:%Y-%m-%d %H:%M}); nothing changed."
            )
        if decision not in (ReviewItem.Decision.KEEP, ReviewItem.Decision.REVOKE):
            raise InvalidInput("Decide keep or revoke.")
        comment = (comment or "").strip()
        if not comment:
            raise InvalidInput("Say why in a comment: the report keeps it as evidence.")
        item.decision = decision
        item.comment = comment[:500]
        item.decided_by = actor.username
        item.decided_at = timezone.now()
        item.save(update_fields=["decision", "comment", "decided_by", "decided_at"])
    return item


def _apply(actor, item: ReviewItem) -> str:
    from apps.accounts.services import assignment_remove

    if item.decision != ReviewItem.Decision.REVOKE:
        return "kept" if item.decision else "not reviewed (kept)"
    assignment = RoleAssignment.objects.select_related("user", "host", "vm").filter(pk=item.assignment_id).first()
    if assignment is None:
        return "already removed"
    try:
        assignment_remove(actor=actor, assignment=assignment)
    except (PortalError, PermissionDenied) as exc:  # audited by the accounts service
        return f"not revoked: {getattr(exc, 'message', str(exc))}"[:300]
    return "revoked"


def campaign_close(*, actor, campaign: ReviewCampaign) -> ReviewCampaign:
    """Apply the revocations, freeze the report (CSV text and its SHA-256, also written to
    the audit log) and close. Undecided assignments are kept and reported as not reviewed.
    Closing twice is refused and changes nothing."""
    action = "reviews.campaign.close"
    authorize(actor, "access_review.manage", action=action, target=campaign)
    with audited(actor=actor, action=action, target=campaign, atomic=True) as ev:
        campaign = ReviewCampaign.objects.select_for_update().get(pk=campaign.pk)
        if not campaign.is_open:
            raise Conflict(
                f"The campaign {campaign.name!r} was already closed by {campaign.closed_by} at "
                f"{campaign.closed_at:%Y-%m-%d %H:%M}; nothing changed."
            )
        items = list(campaign.items.select_for_update().order_by("username", "role", "scope_label", "id"))
        for item in items:
            item.applied = _apply(actor, item)
        ReviewItem.objects.bulk_update(items, ["applied"])
        campaign.state = ReviewCampaign.State.CLOSED
        campaign.closed_by = actor.username
        campaign.closed_at = timezone.now()
        campaign.report_csv = exports.campaign_csv(campaign, items)
        campaign.report_sha256 = exports.sha256_text(campaign.report_csv)
        campaign.save(update_fields=["state", "closed_by", "closed_at", "report_csv", "report_sha256"])
        ev.target = campaign
        ev.params = {
            "revoked": sum(i.applied == "revoked" for i in items),
            "kept": sum(i.decision == ReviewItem.Decision.KEEP for i in items),
            "not_reviewed": sum(not i.decision for i in items),
            "not_revoked": sum(i.applied.startswith("not revoked") for i in items),
            "report_sha256": campaign.report_sha256,
        }
    return campaign


def campaign_report_checked(campaign: ReviewCampaign) -> str:
    """The frozen CSV of a closed campaign, after checking it still matches its SHA-256."""
    if campaign.is_open:
        raise Conflict("The campaign is still open: its report is frozen when it closes.")
    if exports.sha256_text(campaign.report_csv) != campaign.report_sha256:
        raise Conflict("The frozen report no longer matches its SHA-256: it was altered after closing.")
    return campaign.report_csv


def dormant_accounts_disable(now=None) -> list[str]:
    """The optional policy (ACCESS_DISABLE_DORMANT_DAYS > 0): disable, as the system and
    audited, every active account without a sign-in for that many days (never signed in:
    counted from its creation). The last active admin is never disabled."""
    days = settings.ACCESS_DISABLE_DORMANT_DAYS
    if days <= 0:
        return []
    from apps.accounts.services import user_set_active

    cutoff = (now or timezone.now()) - timedelta(days=days)
    dormant = User.objects.filter(is_active=True).exclude(last_login__gte=cutoff)
    dormant = dormant.exclude(last_login__isnull=True, date_joined__gte=cutoff).order_by("username")
    disabled = []
    for user in dormant:
        with transaction.atomic():
            admins = RoleAssignment.objects.filter(role=Role.ADMIN, user__is_active=True).exclude(user=user)
            if RoleAssignment.objects.filter(user=user, role=Role.ADMIN).exists() and not admins.exists():
                continue  # the portal would be left without an admin
            user_set_active(actor=None, user=user, active=False, reason=f"dormant: no sign-in for {days} days")
        disabled.append(user.username)
    return disabled
