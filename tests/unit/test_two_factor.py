"""Two-factor sign-in, through the real pages: enrolment (QR code, secret, a code to turn it
on, recovery codes), the code step after the password, admins required to have it, a
replayed or wrong code refused, recovery codes used once, the code asked again at
re-authentication, and an admin turning it off for a user (after re-authenticating)."""

import base64
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.urls import reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts import mfa, reauth
from apps.accounts.mfa_status import mfa_enabled
from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from tests.conftest import PASSWORD, reauthenticate

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_backoff(settings):
    """django-otp's back-off after a wrong code (1 s, 2 s, ...) off, for tests that type a
    wrong code and then the right one at once; test_wrong_codes_are_throttled keeps it."""
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    settings.OTP_STATIC_THROTTLE_FACTOR = 0


def current_code(device: TOTPDevice) -> str:
    """What the authenticator app shows now (no reset of the device's memory of used codes)."""
    device.refresh_from_db()
    return f"{TOTP(device.bin_key, device.step, device.t0, device.digits).token():06d}"


def sign_in(client, user, password=PASSWORD):
    response = client.post(reverse("login"), {"username": user.username, "password": password})
    assert response.status_code == 302, "the password step failed"
    return response


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("id").values_list("outcome", "params", "error"))


def test_enrolment_shows_a_qr_code_and_the_secret_and_needs_a_valid_code(client, operator, no_backoff):
    client.force_login(operator)
    page = client.get(reverse("accounts:mfa_setup"))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'src="data:image/svg+xml;base64,' in html
    svg = base64.b64decode(re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', html).group(1))
    assert svg.startswith(b"<svg") and b'id="qr-path"' in svg
    device = TOTPDevice.objects.get(user=operator, confirmed=False)
    secret = re.search(r'data-testid="mfa-secret">([A-Z2-7 ]+)<', html).group(1).replace(" ", "")
    assert base64.b32decode(secret + "=" * (-len(secret) % 8)) == device.bin_key  # the same secret as the QR
    assert client.get(reverse("accounts:mfa_setup")).status_code == 200
    assert TOTPDevice.objects.filter(user=operator).count() == 1  # reopening the page keeps the secret

    confirm = reverse("accounts:mfa_confirm")
    for bad, message in (("12ab", "6 digits"), ("", "Type the 6-digit code"), ("abcdefgh", "6-digit code")):
        response = client.post(confirm, {"code": bad})
        assert response.status_code == 400 and message in response.content.decode(), bad
    wrong = f"{(int(current_code(device)) + 1) % 1000000:06d}"
    assert client.post(confirm, {"code": wrong}).status_code == 400
    assert not mfa_enabled(operator) and not StaticDevice.objects.filter(user=operator).exists()

    response = client.post(confirm, {"code": current_code(device)})
    assert response.status_code == 200
    codes = re.findall(r"<li><code>([a-z2-7]{8})</code></li>", response.content.decode())
    assert len(codes) == 10 and len(set(codes)) == 10
    assert mfa_enabled(operator) and mfa.recovery_codes_left(operator) == 10
    assert client.get(reverse("dashboard")).status_code == 200  # the code verified this session
    outcomes = [(o, p.get("reason")) for o, p, _ in events("auth.mfa.enrol")]
    assert outcomes == [("failed", "malformed"), ("failed", None), ("failed", "malformed"), ("failed", "wrong"),
                        ("success", None)]
    audit_text = str(list(AuditEvent.objects.values_list("params", "error")))
    assert secret not in audit_text and not any(c in audit_text for c in codes)

    again = client.post(confirm, {"code": current_code(device)})  # already on: refused, nothing changes
    assert again.status_code == 400 and "already on" in again.content.decode()
    assert mfa.recovery_codes_left(operator) == 10


def test_an_admin_without_a_device_can_only_enrol_after_the_password(client, make_user, no_backoff):
    admin = make_user("ada-admin", Role.ADMIN, mfa=False)
    sign_in(client, admin)
    for url in (reverse("dashboard"), reverse("vms:list"), reverse("accounts:list"), reverse("accounts:reauth")):
        response = client.get(url)
        assert response.status_code == 302 and urlsplit(response["Location"]).path == reverse("accounts:mfa_setup")
    assert parse_qs(urlsplit(client.get(reverse("vms:list"))["Location"]).query)["next"] == [reverse("vms:list")]
    created = client.post(reverse("accounts:create"), {"username": "sneaky", "password": "a-long-enough-pass-42"})
    assert urlsplit(created["Location"]).path == reverse("accounts:mfa_setup")
    htmx = client.get(reverse("vms:list"), HTTP_HX_REQUEST="true")
    assert htmx.status_code == 204 and htmx["HX-Redirect"] == reverse("accounts:mfa_setup")
    assert not AuditEvent.objects.filter(action__startswith="accounts.").exists()

    page = client.get(reverse("accounts:mfa_setup"))
    assert page.status_code == 200 and 'data-testid="mfa-required"' in page.content.decode()
    device = TOTPDevice.objects.get(user=admin, confirmed=False)
    assert client.post(reverse("accounts:mfa_confirm"), {"code": current_code(device)}).status_code == 200
    assert client.get(reverse("accounts:list")).status_code == 200


def test_the_code_step_follows_the_password_and_a_replayed_code_is_refused(client, make_user, no_backoff):
    user = make_user("olli-operator", Role.OPERATOR, mfa=True)
    device = TOTPDevice.objects.get(user=user)
    sign_in(client, user)
    response = client.get(reverse("vms:list"))
    assert urlsplit(response["Location"]).path == reverse("accounts:mfa_verify")
    assert client.get(reverse("accounts:mfa_setup")).status_code == 302  # nothing but the code step

    verify = reverse("accounts:mfa_verify")
    wrong = f"{(int(current_code(device)) + 1) % 1000000:06d}"
    response = client.post(verify, {"code": wrong, "next": reverse("vms:list")})
    assert response.status_code == 400 and "That code is wrong" in response.content.decode()
    response = client.post(verify, {"code": "12 34", "next": reverse("vms:list")})
    assert response.status_code == 400 and "6 digits" in response.content.decode()
    code = current_code(device)
    response = client.post(verify, {"code": code, "next": reverse("vms:list")})
    assert response.status_code == 302 and response["Location"] == reverse("vms:list")
    assert client.get(reverse("vms:list")).status_code == 200

    client.post(reverse("logout"))
    sign_in(client, user)
    replay = client.post(verify, {"code": code})  # the same code, still within its 30 s
    assert replay.status_code == 400 and "already used" in replay.content.decode()
    assert urlsplit(client.get(reverse("dashboard"))["Location"]).path == verify  # still not through
    assert [p for _, p, _ in events("auth.login")] == [{"second_factor": "pending"}] * 2
    outcomes = [(o, p.get("reason") or p.get("method")) for o, p, _ in events("auth.mfa.verify")]
    assert outcomes == [("failed", "wrong"), ("failed", "malformed"), ("success", "totp"), ("failed", "replayed")]


def test_wrong_codes_are_throttled_and_audited(client, make_user):
    user = make_user(role=Role.VIEWER, mfa=True)
    device = TOTPDevice.objects.get(user=user)
    sign_in(client, user)
    wrong = f"{(int(current_code(device)) + 1) % 1000000:06d}"
    assert client.post(reverse("accounts:mfa_verify"), {"code": wrong}).status_code == 400
    response = client.post(reverse("accounts:mfa_verify"), {"code": current_code(device)})  # right, but too soon
    assert response.status_code == 400 and "Too many wrong codes" in response.content.decode()
    assert [(o, p["reason"]) for o, p, _ in events("auth.mfa.verify")] == [("failed", "wrong"), ("denied", "throttled")]
    device.refresh_from_db()
    assert device.throttling_failure_count == 1 and device.last_t == -1


def test_a_recovery_code_signs_in_once(client, make_user, no_backoff):
    user = make_user(role=Role.VIEWER, mfa=True)
    codes = mfa._new_recovery_codes(user)
    sign_in(client, user)
    response = client.post(reverse("accounts:mfa_verify"), {"code": codes[0].upper()[:4] + "-" + codes[0][4:]})
    assert response.status_code == 302
    assert [p for _, p, _ in events("auth.mfa.recovery_used")] == [{"codes_left": 9}]
    client.post(reverse("logout"))
    sign_in(client, user)
    again = client.post(reverse("accounts:mfa_verify"), {"code": codes[0]})
    assert again.status_code == 400 and "already used" in again.content.decode()
    assert client.post(reverse("accounts:mfa_verify"), {"code": codes[1]}).status_code == 302


def test_new_recovery_codes_need_a_reauthentication_and_replace_the_old(client, admin):
    old = mfa._new_recovery_codes(admin)
    client.force_login(admin)
    url = reverse("accounts:mfa_recovery")
    assert urlsplit(client.post(url)["Location"]).path == reverse("accounts:reauth")
    reauthenticate(client)
    response = client.post(url)
    new = re.findall(r"<li><code>([a-z2-7]{8})</code></li>", response.content.decode())
    assert len(new) == 10 and not set(new) & set(old)
    assert mfa.recovery_codes_left(admin) == 10
    assert [o for o, _, _ in events("auth.mfa.recovery_regenerate")] == ["success"]


def test_everyone_needs_it_with_mfa_required_for_all(client, viewer, settings):
    client.force_login(viewer)
    assert client.get(reverse("dashboard")).status_code == 200  # by default only admins must
    settings.MFA_REQUIRED_FOR_ALL = True
    response = client.get(reverse("dashboard"))
    assert urlsplit(response["Location"]).path == reverse("accounts:mfa_setup")


def test_reauthentication_asks_the_code_too(client, admin, no_backoff):
    device = TOTPDevice.objects.get(user=admin)
    client.force_login(admin)
    url = reverse("accounts:reauth")
    assert b'autocomplete="one-time-code"' in client.get(url).content
    for data, message in (
        ({"password": PASSWORD}, "6 digits"),
        ({"password": PASSWORD, "code": "0000000"}, "6 digits"),
        ({"password": "wrong-password-1", "code": current_code(device)}, "not your password"),
    ):
        response = client.post(url, data)
        assert response.status_code == 400 and message in response.content.decode()
        assert reauth.SESSION_KEY not in client.session
    code = current_code(device)
    assert client.post(url, {"password": PASSWORD, "code": code}).status_code == 302
    assert reauth.SESSION_KEY in client.session
    del_session = client.session
    del del_session[reauth.SESSION_KEY]
    del_session.save()
    replay = client.post(url, {"password": PASSWORD, "code": code})
    assert replay.status_code == 400 and "already used" in replay.content.decode()
    assert reauth.SESSION_KEY not in client.session
    assert [o for o, _, _ in events("auth.reauth.failed")] == ["failed"] * 4
    assert [p for _, p, _ in events("auth.reauth")] == [{"second_factor": "totp"}]


def test_an_admin_turns_a_users_two_factor_off_after_reauthenticating(client, admin, make_user, no_backoff):
    user = make_user(role=Role.OPERATOR, mfa=True)
    mfa._new_recovery_codes(user)
    device = TOTPDevice.objects.get(user=user)
    pending = Client()  # signed in with the password, about to type the code
    sign_in(pending, user)
    code = current_code(device)

    client.force_login(admin)
    url = reverse("accounts:mfa_disable", args=[user.pk])
    assert b'data-testid="user-mfa">On' in client.get(reverse("accounts:detail", args=[user.pk])).content
    assert urlsplit(client.post(url)["Location"]).path == reverse("accounts:reauth")
    assert mfa_enabled(user)
    reauthenticate(client)
    assert client.post(url).status_code == 302
    assert not mfa_enabled(user) and not StaticDevice.objects.filter(user=user).exists()
    assert [(o, p) for o, p, _ in events("auth.mfa.disable")] == [("success", {"devices_removed": 2})]
    assert client.post(url).status_code == 409  # nothing left to turn off: a clear refusal
    assert events("auth.mfa.disable")[-1][0] == "failed"

    response = pending.post(reverse("accounts:mfa_verify"), {"code": code})  # its device is gone
    assert response.status_code == 400 and "belongs to no active device" in response.content.decode()
    assert events("auth.mfa.verify")[-1][1] == {"reason": "no_device"}
    assert pending.get(reverse("dashboard")).status_code == 200  # an operator need not have it


def test_a_session_verified_by_a_device_that_was_removed_is_no_longer(client, admin, make_user):
    other = make_user(role=Role.ADMIN)
    client.force_login(other)
    assert client.get(reverse("dashboard")).status_code == 200
    mfa.mfa_disable(actor=admin, user=other)
    response = client.get(reverse("dashboard"))  # an admin: must enrol again before anything else
    assert urlsplit(response["Location"]).path == reverse("accounts:mfa_setup")


def test_the_command_turns_it_off_when_no_admin_can_sign_in(admin):
    from django.core.management import CommandError, call_command

    call_command("mfa_disable", admin.username)
    assert not mfa_enabled(admin)
    event = AuditEvent.objects.get(action="auth.mfa.disable")
    assert (event.outcome, event.actor_name, event.target_name) == ("success", "system", str(admin))
    with pytest.raises(CommandError, match="not on for"):
        call_command("mfa_disable", admin.username)
    with pytest.raises(CommandError, match="No user"):
        call_command("mfa_disable", "nobody-here")
