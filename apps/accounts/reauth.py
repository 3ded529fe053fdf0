"""Sudo mode: account changes and destructive or key-revealing actions need the password
typed again within settings.REAUTH_MAX_AGE seconds.

REAUTH_POLICY below is the one list of which actions need it, by URL name. Every
state-changing URL has an entry, ALWAYS, NEVER or When(field, values) for a URL whose form
does several things (the VM page's action buttons: only force off needs it); a test
enumerates the URL conf, so a new view without a decision fails it
(tests/unit/test_reauth_policy.py). The check runs in `permission_required`, right after
the permission: a user who may not act gets a 403, one who may but has not confirmed
recently is sent to the re-auth form (HTMX: HX-Redirect), which comes back to `next` (the
page the action was on). The refusal is audited as `auth.reauth.required`. Services stay
free of requests: this is a view-level check, like the CSRF token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from apps.audit.middleware import client_ip
from apps.audit.services import record
from apps.core.errors import PortalError

from . import throttle

SESSION_KEY = "portal_reauth_at"

ALWAYS = "always"
NEVER = "never"


@dataclass(frozen=True)
class When:
    """Needed only when the posted form's `field` is one of `values`."""

    field: str
    values: frozenset[str]

    def __init__(self, field: str, *values: str):
        object.__setattr__(self, "field", field)
        object.__setattr__(self, "values", frozenset(values))


# URL name -> whether a recent re-authentication is needed. NEVER entries are decisions
# too: reversible or additive, confirmed where destructive, audited like everything.
REAUTH_POLICY: dict[str, str | When] = {
    # who may do what: every account and role change
    "accounts:create": ALWAYS,
    "accounts:set_active": ALWAYS,
    "accounts:assignment_add": ALWAYS,
    "accounts:assignment_remove": ALWAYS,
    "accounts:password_set": ALWAYS,  # an admin sets another user's password
    # one's own password: the form asks for the current one (the proof; its guesses are
    # throttled with the re-authentication's counter)
    "accounts:password_change": NEVER,
    # two-factor sign-in: enrolling needs a valid code of the new device (the password was
    # just typed at sign-in); new recovery codes replace the old ones, and turning a user's
    # two-factor sign-in off weakens their account
    "accounts:mfa_confirm": NEVER,
    "accounts:mfa_recovery": ALWAYS,
    "accounts:mfa_disable": ALWAYS,
    # VMs: force off loses unsaved work, a deleted snapshot is gone
    "vms:action": When("action", "force_off"),  # start, shutdown, suspend, resume: NEVER
    "vms:snapshot_create": NEVER,
    "vms:console_token": NEVER,  # operate-level, like start; every session is audited (start and end)
    "vms:snapshot_delete": ALWAYS,
    "profiles:save": NEVER,
    "profiles:import": NEVER,
    "profiles:vm_create": NEVER,
    "profiles:vm_resources": NEVER,
    "profiles:vm_delete": ALWAYS,  # destroys a VM, and its disks when asked
    # storage: a deleted volume is gone; quotas, limits and resizes (growth only) are reversible
    "storage:alert_ack": NEVER,
    "storage:settings_save": NEVER,
    "storage:pool_limits": NEVER,
    "storage:quota_set": NEVER,
    "storage:quota_expand": NEVER,
    "storage:volume_create": NEVER,
    "storage:volume_resize": NEVER,
    "storage:volume_delete": ALWAYS,
    # backups: a run and a restore to a new VM add; verification reads; pruning deletes backups
    "backups:backup_now": NEVER,
    "backups:restore": NEVER,
    "backups:restore_in_place": ALWAYS,  # replaces the VM's disks (their previous files are kept)
    "backups:verify": NEVER,
    "backups:prune": ALWAYS,
    "backups:policy_create": NEVER,  # adds backups
    "backups:policy_update": ALWAYS,  # can move, thin out or switch off every VM's backups
    # encryption: keys, passphrases and the key store
    "encryption:create": NEVER,
    "encryption:encrypt_existing": NEVER,  # confirmed; keeps the data (header backed up first)
    "encryption:change_key": ALWAYS,
    "encryption:header_backup": NEVER,
    "encryption:escrow_export": ALWAYS,
    "encryption:recovery_test": ALWAYS,
    "encryption:key_restore": ALWAYS,  # writes a disk key from an escrow file
    "encryption:destroy_stale": ALWAYS,  # destroys header backups for good
    # monitoring: running the read-only host checks now changes nothing on the host
    "monitoring:security_run": NEVER,
    "monitoring:lynis_run": NEVER,  # a read-only scan
    "monitoring:incident_plan_save": NEVER,  # versioned, audited
    "monitoring:audit_rules_install": ALWAYS,  # writes the host's auditd configuration
    "monitoring:incident_plan_review": NEVER,
    "monitoring:training_acknowledge": NEVER,  # the user's own acknowledgement
    "encryption:vm_start": NEVER,
    "encryption:vm_start_manual": NEVER,  # the typed passphrase is the proof (throttled, audited)
    "encryption:vm_unlock_policy": ALWAYS,  # who can open a critical VM's disks
    "encryption:vm_passphrase_change": ALWAYS,
    "encryption:vm_stop": When("force", "yes"),  # a forced stop is a force off
    "encryption:unseal": ALWAYS,
    "encryption:seal": ALWAYS,  # stops every encrypted disk from opening
    "encryption:rotate": ALWAYS,
    # network: zones and rules are enforced only by an apply, which rolls back unless confirmed;
    # quarantine and release cut a VM off or put it back on the network
    "network:zone_create": NEVER,
    "network:zone_edit": NEVER,
    "network:zone_delete": ALWAYS,
    "network:zone_rule_add": NEVER,
    "network:vm_rule_add": NEVER,
    "network:rule_delete": NEVER,
    "network:apply": NEVER,  # rolls itself back unless confirmed
    "network:confirm": ALWAYS,  # makes the change stick
    "network:vm_move": ALWAYS,  # another zone's policy applies, and role scopes follow the label
    "network:quarantine": ALWAYS,
    "network:release": ALWAYS,
    # access reviews: starting a campaign and a decision change nobody's access; closing
    # applies the revocations
    "reviews:campaign_start": NEVER,
    "reviews:campaign_decide": NEVER,  # applied only when the campaign closes (re-authenticated)
    "reviews:campaign_close": ALWAYS,
}


class ReauthRequired(PortalError):
    status = 403


class ReauthRefused(PortalError):
    status = 400


def needs_reauth(request) -> bool:
    """Does this request, by REAUTH_POLICY, need a recent re-authentication?"""
    match = getattr(request, "resolver_match", None)
    rule = REAUTH_POLICY.get(match.view_name if match else "", NEVER)
    if isinstance(rule, When):
        return request.method == "POST" and request.POST.get(rule.field, "") in rule.values
    return rule == ALWAYS


def has_recent_auth(request) -> bool:
    at = request.session.get(SESSION_KEY)
    return isinstance(at, (int, float)) and 0 <= time.time() - at <= settings.REAUTH_MAX_AGE


def mark_recent_auth(request) -> None:
    request.session[SESSION_KEY] = time.time()


def require_recent_auth(request) -> None:
    """Raise ReauthRequired unless the user typed their password in the last REAUTH_MAX_AGE s."""
    if not has_recent_auth(request):
        raise ReauthRequired("Confirm your password first: this action needs a recent sign-in.")


def refuse(request) -> str:
    """Audit a request refused for want of a re-authentication; the URL of the re-auth form."""
    record(
        actor=request.user,
        action="auth.reauth.required",
        target=("page", "", request.resolver_match.view_name),
        outcome="denied",
        params={"page": request.resolver_match.view_name},
        error="needs a recent re-authentication",
    )
    return reauth_url(request)


def safe_next(request, candidate: str) -> str:
    if candidate and url_has_allowed_host_and_scheme(candidate, {request.get_host()}, request.is_secure()):
        return candidate
    return reverse("dashboard")


def reauth_url(request) -> str:
    back = request.headers.get("HX-Current-URL") or request.headers.get("Referer") or request.get_full_path()
    if request.method != "GET" and back == request.get_full_path():
        back = ""
    return f"{reverse('accounts:reauth')}?{urlencode({'next': safe_next(request, back)})}"


def confirm_password(request, password: str, code: str = "") -> None:
    """The re-authentication itself: mark the session when `password` is the signed-in
    user's and, for a user with two-factor sign-in, `code` is a valid TOTP or recovery
    code; otherwise raise ReauthRefused. Guesses are throttled by their own counter
    (throttle.REAUTH), never the sign-in one; each outcome is audited."""
    from . import mfa

    user, ip = request.user, client_ip(request)
    username = user.get_username()
    if throttle.is_locked(username, ip, throttle.REAUTH):
        record(actor=user, action="auth.reauth.throttled", target=user, outcome="denied", error="too many failures")
        raise ReauthRefused(f"Too many wrong passwords. Wait {settings.LOGIN_FAILURE_WINDOW // 60} minutes.")
    if not user.check_password(password):  # not authenticate(): that would log a failed sign-in
        throttle.note_failure(username, ip, throttle.REAUTH)
        record(actor=user, action="auth.reauth.failed", target=user, outcome="failed", error="wrong password")
        raise ReauthRefused("That is not your password.")
    method = None
    if mfa.mfa_enabled(user):
        try:
            method = mfa.check_code(user, code).method
        except mfa.MFARefused as exc:
            if exc.reason != mfa.MALFORMED:  # a typo in the code's shape is no guess
                throttle.note_failure(username, ip, throttle.REAUTH)
            record(
                actor=user,
                action="auth.reauth.failed",
                target=user,
                outcome="denied" if exc.reason == mfa.THROTTLED else "failed",
                params={"reason": exc.reason},
                error=f"second factor: {exc.message}",
            )
            raise ReauthRefused(exc.message) from None
    throttle.clear(username, ip, throttle.REAUTH)
    mark_recent_auth(request)
    record(actor=user, action="auth.reauth", target=user, outcome="success", params={"second_factor": method or "none"})
    if method == "recovery":
        mfa.record_recovery_use(user)
