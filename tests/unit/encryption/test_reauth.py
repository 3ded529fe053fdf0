"""apps.accounts.reauth: the sudo mode sensitive encryption actions ask for."""

import time

import pytest
from django.urls import reverse

from apps.accounts import reauth
from apps.audit.models import AuditEvent
from tests.conftest import PASSWORD


@pytest.mark.django_db
def test_reauth_marks_the_session_and_expires(client, operator, settings, monkeypatch):
    client.force_login(operator)
    assert client.get(reverse("accounts:reauth")).status_code == 200
    response = client.post(reverse("accounts:reauth"), {"password": PASSWORD, "next": "/encryption/"})
    assert response.status_code == 302 and response["Location"] == "/encryption/"
    at = client.session[reauth.SESSION_KEY]
    assert abs(at - time.time()) < 60

    class Request:
        session = {reauth.SESSION_KEY: at}

    assert reauth.has_recent_auth(Request)
    monkeypatch.setattr(reauth.time, "time", lambda: at + settings.REAUTH_MAX_AGE + 1)
    assert not reauth.has_recent_auth(Request)
    with pytest.raises(reauth.ReauthRequired):
        reauth.require_recent_auth(Request)


@pytest.mark.django_db
def test_reauth_refuses_foreign_next_urls_and_throttles_guessing(client, operator, settings):
    client.force_login(operator)
    response = client.post(reverse("accounts:reauth"), {"password": PASSWORD, "next": "https://evil.example/"})
    assert response["Location"] == reverse("dashboard")
    for _ in range(settings.REAUTH_FAILURE_LIMIT):
        assert client.post(reverse("accounts:reauth"), {"password": "guess"}).status_code == 400
    locked = client.post(reverse("accounts:reauth"), {"password": PASSWORD})
    assert locked.status_code == 400 and b"Too many" in locked.content
    assert AuditEvent.objects.filter(action="auth.reauth.failed").count() == settings.REAUTH_FAILURE_LIMIT
    assert AuditEvent.objects.filter(action="auth.reauth.throttled", outcome="denied").count() == 1
