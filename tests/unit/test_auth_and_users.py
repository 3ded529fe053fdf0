"""Sign-in, throttling, sessions of disabled users, and user/role management by admins."""

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.test import Client, override_settings
from django.urls import reverse

from apps.accounts import reauth, services
from apps.accounts.models import Role, RoleAssignment
from apps.audit.models import AuditEvent
from apps.core.errors import Conflict, InvalidInput
from tests.conftest import PASSWORD, reauthenticate

pytestmark = pytest.mark.django_db
User = get_user_model()


def login(client, username, password=PASSWORD):
    return client.post(reverse("login"), {"username": username, "password": password})


def test_login_and_logout_are_audited(client, operator):
    assert login(client, operator.username).status_code == 302
    client.post(reverse("logout"))
    assert list(AuditEvent.objects.order_by("id").values_list("action", "outcome", "actor_name")) == [
        ("auth.login", "success", operator.username),
        ("auth.logout", "success", operator.username),
    ]


def test_failed_login_is_audited_without_the_password(client, operator):
    response = login(client, operator.username, "wrong-password-123")
    assert response.status_code == 200
    event = AuditEvent.objects.get(action="auth.login")
    assert (event.outcome, event.actor_name, event.source_ip) == ("failed", operator.username, "127.0.0.1")
    assert "wrong-password-123" not in str(event.params) + event.error


@override_settings(LOGIN_FAILURE_LIMIT=3)
def test_login_is_throttled_after_repeated_failures(client, operator):
    """django-axes locks the user name at the third failure; the lockout is audited once,
    and a try during it (even with the right password) is refused unchecked and audited."""
    statuses = [login(client, operator.username, "nope-nope-nope").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    response = login(client, operator.username)  # even the right password is refused now
    assert response.status_code == 429
    assert b"Too many failed sign-ins" in response.content
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="auth.login", outcome="failed").count() == 3
    assert AuditEvent.objects.filter(action="auth.login", outcome="denied").count() == 1
    lockout = AuditEvent.objects.get(action="auth.login.lockout")
    assert (lockout.outcome, lockout.target_name, lockout.params) == ("denied", operator.username, {"failures": 3})
    assert Client().get(reverse("login")).status_code == 200  # the page itself stays open


def test_disabling_a_user_ends_their_sessions(client, admin, operator):
    victim = Client()
    login(victim, operator.username)
    assert victim.get(reverse("vms:list")).status_code != 302
    services.user_set_active(actor=admin, user=operator, active=False)
    response = victim.get(reverse("dashboard"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    event = AuditEvent.objects.get(action="accounts.user.disable")
    assert event.params == {"sessions_ended": "all"}


def test_admin_cannot_disable_themselves(admin):
    with pytest.raises(Conflict):
        services.user_set_active(actor=admin, user=admin, active=False)
    assert User.objects.get(pk=admin.pk).is_active


def test_admin_creates_a_user_through_the_page(client, admin):
    client.force_login(admin)
    form = {"username": "newbie", "password": "a-long-enough-pass-42", "role": Role.VIEWER, "email": ""}
    response = client.post(reverse("accounts:create"), form)
    assert response["Location"].startswith(reverse("accounts:reauth"))  # the session alone is not enough
    assert not User.objects.filter(username="newbie").exists()
    assert AuditEvent.objects.get(action="auth.reauth.required").params == {"page": "accounts:create"}
    reauthenticate(client)
    response = client.post(reverse("accounts:create"), form)
    assert response.status_code == 302
    newbie = User.objects.get(username="newbie")
    assert newbie.check_password("a-long-enough-pass-42")
    assert list(newbie.role_assignments.values_list("role", "scope")) == [("viewer", "global")]
    event = AuditEvent.objects.get(action="accounts.user.create")
    assert "a-long-enough-pass-42" not in str(event.params)


def test_bad_user_input_is_refused_and_audited(client, admin):
    client.force_login(admin)
    reauthenticate(client)
    response = client.post(reverse("accounts:create"), {"username": "bad name;rm", "password": "short", "role": "x"})
    assert response.status_code == 400
    assert not User.objects.filter(username="bad name;rm").exists()
    assert AuditEvent.objects.get(action="accounts.user.create").outcome == "failed"


def test_scoped_assignment_rules(admin, operator, host):
    with pytest.raises(InvalidInput, match="needs its host"):
        services.assignment_add(actor=admin, user=operator, role=Role.VIEWER, scope="host")
    with pytest.raises(InvalidInput, match="only be given globally"):
        services.assignment_add(actor=admin, user=operator, role=Role.ADMIN, scope="host", host=host)
    a = services.assignment_add(actor=admin, user=operator, role=Role.VIEWER, scope="host", host=host)
    assert a.scope_label == f"host {host.name}"
    with pytest.raises(Conflict):
        services.assignment_add(actor=admin, user=operator, role=Role.VIEWER, scope="host", host=host)
    outcomes = list(AuditEvent.objects.filter(action="accounts.role.assign").values_list("outcome", flat=True))
    assert sorted(outcomes) == ["failed", "failed", "failed", "success"]


def test_the_last_admin_cannot_be_revoked(admin):
    only = RoleAssignment.objects.get(user=admin, role=Role.ADMIN)
    with pytest.raises(Conflict, match="last active admin"):
        services.assignment_remove(actor=admin, assignment=only)
    assert RoleAssignment.objects.filter(pk=only.pk).exists()


def test_non_admins_cannot_manage_users(operator, viewer):
    with pytest.raises(PermissionDenied):
        services.user_create(actor=operator, username="sneaky", password="a-long-enough-pass-42")
    with pytest.raises(PermissionDenied):
        services.user_set_active(actor=operator, user=viewer, active=False)
    assert not User.objects.filter(username="sneaky").exists()
    assert User.objects.get(pk=viewer.pk).is_active
    assert AuditEvent.objects.filter(outcome="denied").count() == 2


def test_csrf_is_required_for_every_post(admin, host):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    response = client.post(
        reverse("accounts:create"), {"username": "csrfless", "password": "a-long-enough-pass-42", "role": Role.VIEWER}
    )
    assert response.status_code == 403
    assert not User.objects.filter(username="csrfless").exists()


def test_pages_send_a_content_security_policy(client, admin, host):
    client.force_login(admin)
    response = client.get(reverse("dashboard"))
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"


def test_an_expired_session_is_sent_to_login_and_changes_nothing(client, admin):
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    login(client, admin.username)
    Session.objects.update(expire_date=timezone.now() - timezone.timedelta(seconds=1))
    response = client.post(
        reverse("accounts:create"), {"username": "late", "password": "a-long-enough-pass-42", "role": Role.VIEWER}
    )
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not User.objects.filter(username="late").exists()


def test_a_scoped_auditor_cannot_read_the_whole_audit_log(client, make_user, host):
    scoped = make_user(role=Role.AUDITOR, scope="host", host=host)
    client.force_login(scoped)
    assert client.get(reverse("audit:events")).status_code == 403
    assert client.get(reverse("reviews:report")).status_code == 403
    assert AuditEvent.objects.filter(actor_name=scoped.username, outcome="denied").count() == 2


def test_host_uris_are_shown_to_admins_only(client, admin, viewer, host):
    client.force_login(viewer)
    assert host.uri not in client.get(reverse("dashboard")).content.decode()
    client.force_login(admin)
    assert host.uri in client.get(reverse("dashboard")).content.decode()


def test_enabling_a_user_needs_a_recent_reauthentication(client, admin, operator):
    operator.is_active = False
    operator.save()
    client.force_login(admin)
    url = reverse("accounts:set_active", args=[operator.pk])
    assert client.post(url, {"active": "yes"})["Location"].startswith(reverse("accounts:reauth"))
    assert not User.objects.get(pk=operator.pk).is_active
    assert not AuditEvent.objects.filter(action="accounts.user.enable").exists()
    reauthenticate(client)
    assert client.post(url, {"active": "yes"}).status_code == 302
    assert User.objects.get(pk=operator.pk).is_active
    assert AuditEvent.objects.get(action="accounts.user.enable").outcome == "success"


def test_granting_the_admin_role_needs_a_recent_reauthentication(client, admin, viewer):
    client.force_login(admin)
    url = reverse("accounts:assignment_add", args=[viewer.pk])
    grant = {"role": Role.ADMIN, "scope": "global"}
    response = client.post(
        url, grant, HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL=f"http://testserver/users/{viewer.pk}/"
    )
    assert response.status_code == 204 and response["HX-Redirect"].startswith(reverse("accounts:reauth"))
    assert not viewer.role_assignments.filter(role=Role.ADMIN).exists()
    refused = AuditEvent.objects.get(action="auth.reauth.required")
    assert (refused.outcome, refused.actor_name) == ("denied", admin.username)
    reauthenticate(client)
    assert client.post(url, grant).status_code == 302
    assert viewer.role_assignments.filter(role=Role.ADMIN, scope="global").exists()


@override_settings(REAUTH_FAILURE_LIMIT=3, LOGIN_FAILURE_LIMIT=3)
def test_failed_reauthentications_do_not_lock_the_user_out_of_signing_in(client, operator):
    """A stolen session guessing the password throttles its re-authentication, never the
    real user's sign-in; each counter is audited as its own action."""
    stolen = Client()
    stolen.force_login(operator)
    for _ in range(3):
        assert stolen.post(reverse("accounts:reauth"), {"password": "guess-guess-guess"}).status_code == 400
    throttled = stolen.post(reverse("accounts:reauth"), {"password": PASSWORD})  # even the right one, now
    assert throttled.status_code == 400 and b"Too many wrong passwords" in throttled.content
    assert reauth.SESSION_KEY not in stolen.session

    assert login(client, operator.username).status_code == 302  # the real user signs in as usual
    assert "_auth_user_id" in client.session
    assert not AuditEvent.objects.filter(action="auth.login", outcome__in=["failed", "denied"]).exists()
    assert AuditEvent.objects.filter(action="auth.reauth.failed", outcome="failed").count() == 3
    assert AuditEvent.objects.filter(action="auth.reauth.throttled", outcome="denied").count() == 1


@override_settings(REAUTH_FAILURE_LIMIT=3, LOGIN_FAILURE_LIMIT=3)
def test_failed_sign_ins_do_not_throttle_a_signed_in_users_reauthentication(client, operator):
    for _ in range(3):
        login(Client(), operator.username, "nope-nope-nope")
    assert b"Too many failed sign-ins" in login(Client(), operator.username).content  # sign-in is throttled
    client.force_login(operator)
    reauthenticate(client)  # the re-authentication has its own counter
    assert AuditEvent.objects.get(action="auth.reauth").outcome == "success"


def test_a_refused_role_assignment_rerenders_the_form_and_is_audited(client, admin, operator):
    client.force_login(admin)
    reauthenticate(client)
    url = reverse("accounts:assignment_add", args=[operator.pk])
    response = client.post(url, {"role": Role.OPERATOR, "scope": "vm", "vm": "nowhere/ghost"})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'data-testid="assignment-errors"' in html and "No VM &#x27;nowhere/ghost&#x27;" in html
    event = AuditEvent.objects.get(action="accounts.role.assign")
    assert (event.outcome, event.target_name) == ("failed", str(operator)) and "No VM" in event.error
    assert event.params == {"role": Role.OPERATOR, "scope": "vm", "vm": "nowhere/ghost"}
    assert not operator.role_assignments.filter(scope="vm").exists()
