"""Changing a password through the pages: your own (the current password, then the new one;
your other sessions end, this one stays) and an admin's "set password" for another user
(re-authenticated; all of that user's sessions end). Every outcome is audited, never with
a password in it."""

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from tests.conftest import PASSWORD, reauthenticate

pytestmark = pytest.mark.django_db
User = get_user_model()
NEW = "a-brand-new-passphrase-7"


def signed_in(user, password=PASSWORD) -> Client:
    c = Client()
    assert c.post(reverse("login"), {"username": user.username, "password": password}).status_code == 302
    assert c.get(reverse("dashboard")).status_code == 200
    return c


def is_signed_out(c: Client) -> bool:
    response = c.get(reverse("dashboard"))
    return response.status_code == 302 and response["Location"].startswith(reverse("login"))


def no_password_in_the_log(*secrets):
    for e in AuditEvent.objects.all():
        text = f"{e.params} {e.error}"
        assert not any(s in text for s in secrets), e.action


def test_changing_your_own_password_ends_your_other_sessions_and_keeps_this_one(operator):
    laptop, phone = signed_in(operator), signed_in(operator)
    response = laptop.post(reverse("accounts:password_change"),
                           {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW})  # fmt: skip
    assert response.status_code == 302 and response["Location"] == reverse("accounts:password")
    assert not is_signed_out(laptop)  # the session that changed it stays
    assert laptop.get(reverse("vms:list")).status_code == 200
    assert is_signed_out(phone)  # every other one ends at once
    assert User.objects.get(pk=operator.pk).check_password(NEW)
    event = AuditEvent.objects.get(action="accounts.user.password")
    assert (event.actor_name, event.target_name, event.outcome) == (operator.username, operator.username, "success")
    assert event.params["sessions_ended"] == "all"
    no_password_in_the_log(PASSWORD, NEW)
    assert laptop.get(reverse("accounts:password")).status_code == 200


@pytest.mark.parametrize("data, message", [
    ({"old_password": "not-my-password-1", "new_password1": NEW, "new_password2": NEW}, "old password"),
    ({"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW + "x"}, "didn"),
    ({"old_password": PASSWORD, "new_password1": "Zq9x", "new_password2": "Zq9x"}, "too short"),
])  # fmt: skip
def test_a_refused_own_password_change_changes_nothing_and_is_audited(operator, data, message):
    c, other = signed_in(operator), signed_in(operator)
    response = c.post(reverse("accounts:password_change"), data)
    assert response.status_code == 400 and message in response.content.decode()
    assert User.objects.get(pk=operator.pk).check_password(PASSWORD)
    assert not is_signed_out(c) and not is_signed_out(other)
    event = AuditEvent.objects.get(action="accounts.user.password")
    assert event.outcome == "failed" and event.params == {}  # the fields sent are all secrets
    no_password_in_the_log(PASSWORD, NEW, data["old_password"], data["new_password1"])


def test_guessing_the_current_password_is_throttled(settings, operator):
    settings.REAUTH_FAILURE_LIMIT = 3
    c = signed_in(operator)
    wrong = {"old_password": "a-wrong-guess-123", "new_password1": NEW, "new_password2": NEW}
    for _ in range(3):
        assert c.post(reverse("accounts:password_change"), wrong).status_code == 400
    right = {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW}
    response = c.post(reverse("accounts:password_change"), right)
    assert response.status_code == 429 and "Too many wrong passwords" in response.content.decode()
    assert User.objects.get(pk=operator.pk).check_password(PASSWORD)
    assert AuditEvent.objects.filter(action="accounts.user.password", error="too many wrong passwords").count() == 1
    cache.clear()


def test_an_admin_sets_another_users_password_after_reauthenticating(admin, operator):
    victim_sessions = [signed_in(operator), signed_in(operator)]
    c = Client()
    c.force_login(admin)
    url = reverse("accounts:password_set", args=[operator.pk])
    response = c.post(url, {"password1": NEW, "password2": NEW})
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:reauth"))
    assert User.objects.get(pk=operator.pk).check_password(PASSWORD)  # nothing before the re-authentication
    assert all(not is_signed_out(s) for s in victim_sessions)
    reauthenticate(c)
    response = c.post(url, {"password1": NEW, "password2": NEW})
    assert response.status_code == 302 and response["Location"] == reverse("accounts:detail", args=[operator.pk])
    assert User.objects.get(pk=operator.pk).check_password(NEW)
    assert all(is_signed_out(s) for s in victim_sessions)
    assert not is_signed_out(c)  # the admin's own session is not touched
    event = AuditEvent.objects.get(action="accounts.user.password")
    assert (event.actor_name, event.target_name, event.outcome) == (admin.username, operator.username, "success")
    no_password_in_the_log(NEW)
    signed_in(operator, NEW)


def test_a_refused_admin_password_set_changes_nothing(admin, operator):
    session = signed_in(operator)
    c = Client()
    c.force_login(admin)
    reauthenticate(c)
    url = reverse("accounts:password_set", args=[operator.pk])
    response = c.post(url, {"password1": NEW, "password2": "something-else-entirely-9"})
    assert response.status_code == 400 and "The two passwords differ." in response.content.decode()
    assert User.objects.get(pk=operator.pk).check_password(PASSWORD) and not is_signed_out(session)
    event = AuditEvent.objects.get(action="accounts.user.password")
    assert event.outcome == "failed" and event.params == {} and event.target_name == operator.username
    no_password_in_the_log(NEW)


def test_only_admins_set_other_users_passwords(make_user, operator, auditor):
    for role_user in (operator, auditor):
        c = Client()
        c.force_login(role_user)
        response = c.post(reverse("accounts:password_set", args=[operator.pk]), {"password1": NEW, "password2": NEW})
        assert response.status_code == 403
    assert User.objects.get(pk=operator.pk).check_password(PASSWORD)
    assert make_user("vic-viewer", Role.VIEWER)


def test_an_admin_setting_their_own_password_keeps_this_session_only(admin):
    other = Client()
    other.force_login(admin)  # signed in with both factors elsewhere
    assert not is_signed_out(other)
    c = Client()
    c.force_login(admin)
    reauthenticate(c)
    response = c.post(reverse("accounts:password_set", args=[admin.pk]), {"password1": NEW, "password2": NEW})
    assert response.status_code == 302
    assert not is_signed_out(c) and is_signed_out(other)
