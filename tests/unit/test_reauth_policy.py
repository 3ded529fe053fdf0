"""Re-authentication (sudo mode) by enumeration, like the URL permission test: every
state-changing URL has a decision in apps.accounts.reauth.REAUTH_POLICY, and every URL the
policy lists refuses (and audits) a request without a recent re-authentication and lets it
through with one. A new state-changing view without a decision fails here."""

from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse

from apps.accounts import reauth
from apps.accounts.reauth import ALWAYS, NEVER, REAUTH_POLICY, When
from apps.audit.models import AuditEvent
from tests.conftest import reauthenticate
from tests.unit.test_url_permissions import EXPECTED, all_patterns, url_for

POST_URLS = {name for name, (_, method) in EXPECTED.items() if method == "POST"}
PATTERNS = dict(all_patterns())


def _guarded():
    """(URL name, the form data that makes it need a re-authentication)."""
    for name, rule in sorted(REAUTH_POLICY.items(), key=lambda item: item[0]):
        if rule == ALWAYS:
            yield name, {}
        elif isinstance(rule, When):
            for value in sorted(rule.values):
                yield name, {rule.field: value}


GUARDED = list(_guarded())


def test_every_state_changing_url_has_a_reauth_decision():
    missing = POST_URLS - set(REAUTH_POLICY)
    assert not missing, f"state-changing URLs without a decision in REAUTH_POLICY: {sorted(missing)}"
    stale = set(REAUTH_POLICY) - POST_URLS
    assert not stale, f"REAUTH_POLICY names URLs that are gone or change nothing: {sorted(stale)}"
    for name, rule in REAUTH_POLICY.items():
        assert rule in (ALWAYS, NEVER) or isinstance(rule, When), f"{name}: {rule!r} is not a decision"


def test_account_changes_and_destructive_actions_need_it():
    for name in (
        "accounts:create",
        "accounts:set_active",
        "accounts:assignment_add",
        "accounts:assignment_remove",
        "accounts:password_set",
        "vms:snapshot_delete",
        "storage:volume_delete",
        "encryption:seal",
        "encryption:unseal",
        "encryption:change_key",
        "encryption:escrow_export",
        "encryption:rotate",
    ):
        assert REAUTH_POLICY[name] == ALWAYS, name
    assert ("vms:action", {"action": "force_off"}) in GUARDED
    assert ("encryption:vm_stop", {"force": "yes"}) in GUARDED


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "data"), GUARDED, ids=[f"{n}-{'-'.join(d.values())}" for n, d in GUARDED])
def test_without_a_recent_reauth_the_action_is_refused_and_audited(client, admin, host, name, data):
    client.force_login(admin)  # every permission: only the re-authentication is missing
    url = url_for(name, PATTERNS[name])
    page = "/vms/local/some-vm/"

    response = client.post(url, data, HTTP_REFERER=page)
    assert response.status_code == 302, f"{name} answered {response.status_code} without a re-authentication"
    target = urlsplit(response["Location"])
    assert target.path == reverse("accounts:reauth") and parse_qs(target.query)["next"] == [page]

    htmx = client.post(url, data, HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL=f"http://testserver{page}")
    assert htmx.status_code == 204
    target = urlsplit(htmx["HX-Redirect"])
    assert target.path == reverse("accounts:reauth") and parse_qs(target.query)["next"] == [f"http://testserver{page}"]

    refused = AuditEvent.objects.filter(action="auth.reauth.required")
    assert [(e.outcome, e.actor_name, e.params) for e in refused] == [("denied", admin.username, {"page": name})] * 2
    ran = AuditEvent.objects.exclude(action__in=["auth.reauth.required", "auth.login"])
    assert not ran.exists(), f"the action itself ran: {list(ran)}"

    reauthenticate(client)
    through = client.post(url, data)  # reaches the view: sample arguments name nothing, so 4xx
    assert not through.get("Location", "").startswith(reverse("accounts:reauth")), f"{name} still asks"
    assert through.status_code != 403


@pytest.mark.django_db
def test_a_reauthentication_counts_for_reauth_max_age_only(client, admin, settings, monkeypatch):
    client.force_login(admin)
    reauthenticate(client)
    url = reverse("accounts:set_active", args=[999999])
    assert client.post(url, {"active": "yes"}).status_code == 404  # through, to a user that does not exist
    at = client.session[reauth.SESSION_KEY]
    monkeypatch.setattr(reauth.time, "time", lambda: at + settings.REAUTH_MAX_AGE + 1)
    response = client.post(url, {"active": "yes"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:reauth"))


@pytest.mark.django_db
def test_actions_decided_never_and_other_choices_of_a_when_rule_do_not_ask(client, admin, host):
    client.force_login(admin)
    for name, rule in REAUTH_POLICY.items():
        if rule == ALWAYS:
            continue
        data = {rule.field: "something-else"} if isinstance(rule, When) else {}
        response = client.post(url_for(name, PATTERNS[name]), data)
        assert not response.get("Location", "").startswith(reverse("accounts:reauth")), f"{name} asked"
    assert not AuditEvent.objects.filter(action="auth.reauth.required").exists()


@pytest.mark.django_db
def test_a_user_without_the_permission_gets_403_not_the_reauth_form(client, operator):
    client.force_login(operator)
    response = client.post(reverse("accounts:create"), {"username": "x"})
    assert response.status_code == 403
    assert not AuditEvent.objects.filter(action="auth.reauth.required").exists()
