"""Every URL in the URL conf: anonymous users are sent to login, and each role gets
exactly the access the policy gives it. A view added without a permission, or missing
from EXPECTED, makes this test fail."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from apps.accounts.permissions import ROLE_PERMISSIONS

PUBLIC = {"login", "logout"}
# url name -> the setting holding the bearer token that alone opens it (no session, no role):
# /metrics is read by Prometheus, not by people; test_token_guarded_urls checks each.
TOKEN_GUARDED = {"metrics": "METRICS_TOKEN"}

# url name -> (the permission its view requires, the method it answers): the policy, written out
EXPECTED = {
    "dashboard": ("dashboard.view", "GET"),
    "jobs": ("jobs.view", "GET"),
    "job": ("jobs.view", "GET"),
    "vms:list": ("vms.view", "GET"),
    "vms:detail": ("vms.view", "GET"),
    "vms:history": ("vms.view", "GET"),
    "vms:revision": ("vms.view", "GET"),
    "vms:action": ("vms.operate", "POST"),
    "vms:console": ("vms.operate", "GET"),
    "vms:console_token": ("vms.operate", "POST"),
    "vms:snapshot_create": ("vms.snapshot", "POST"),
    "vms:snapshot_delete": ("vms.snapshot", "POST"),
    "profiles:list": ("vms.create", "GET"),
    "profiles:detail": ("vms.create", "GET"),
    "profiles:export": ("vms.create", "GET"),
    "profiles:save": ("profiles.change", "POST"),
    "profiles:import": ("profiles.change", "POST"),
    "profiles:vm_new": ("vms.create", "GET"),
    "profiles:vm_create": ("vms.create", "POST"),
    "profiles:vm_resources": ("vms.change", "POST"),
    "profiles:vm_delete": ("vms.delete", "POST"),
    "storage:pools": ("storage.view", "GET"),
    "storage:alerts": ("storage.view", "GET"),
    "storage:alert_ack": ("storage.change", "POST"),
    "storage:settings": ("storage.settings", "GET"),
    "storage:settings_save": ("storage.settings", "POST"),
    "storage:pool": ("storage.view", "GET"),
    "storage:pool_limits": ("storage.settings", "POST"),
    "storage:vm": ("storage.view", "GET"),
    "storage:quota_set": ("storage.change", "POST"),
    "storage:quota_expand": ("storage.change", "POST"),
    "storage:volume_create": ("storage.change", "POST"),
    "storage:volume_resize": ("storage.change", "POST"),
    "storage:volume_delete": ("storage.change", "POST"),
    "network:networks": ("network.view", "GET"),
    "backups:index": ("backups.view", "GET"),
    "backups:backup_now": ("backups.run", "POST"),
    "backups:restore": ("backups.run", "POST"),
    "backups:restore_in_place": ("backups.run", "POST"),
    "backups:verify": ("backups.run", "POST"),
    "backups:prune": ("backups.run", "POST"),
    "backups:policy_create": ("backups.run", "POST"),
    "backups:policy_update": ("backups.run", "POST"),
    "network:zone_create": ("network.zones", "POST"),
    "network:zone": ("network.view", "GET"),
    "network:zone_edit": ("network.zones", "POST"),
    "network:zone_delete": ("network.zones", "POST"),
    "network:zone_rule_add": ("network.change", "POST"),
    "network:vm": ("network.view", "GET"),
    "network:vm_rule_add": ("network.change", "POST"),
    "network:vm_move": ("network.change", "POST"),
    "network:quarantine": ("network.change", "POST"),
    "network:release": ("network.change", "POST"),
    "network:rule_delete": ("network.change", "POST"),
    "network:firewall": ("network.view", "GET"),
    "network:apply": ("network.change", "POST"),
    "network:confirm": ("network.change", "POST"),
    "audit:events": ("audit.view", "GET"),
    "audit:event": ("audit.view", "GET"),
    "audit:export": ("audit.view", "GET"),
    "reviews:report": ("access_review.view", "GET"),
    "reviews:user": ("access_review.view", "GET"),
    "reviews:vm": ("access_review.view", "GET"),
    "reviews:campaigns": ("access_review.view", "GET"),
    "reviews:campaign_start": ("access_review.manage", "POST"),
    "reviews:campaign": ("access_review.view", "GET"),
    "reviews:campaign_decide": ("access_review.manage", "POST"),
    "reviews:campaign_close": ("access_review.manage", "POST"),
    "reviews:campaign_export": ("access_review.view", "GET"),
    "accounts:list": ("accounts.manage", "GET"),
    "accounts:create": ("accounts.manage", "POST"),
    "accounts:detail": ("accounts.manage", "GET"),
    "accounts:set_active": ("accounts.manage", "POST"),
    "accounts:assignment_add": ("accounts.manage", "POST"),
    "accounts:assignment_remove": ("accounts.manage", "POST"),
    "accounts:reauth": ("dashboard.view", "GET"),
    # one's own two-factor sign-in: everyone signed in, like the re-authentication
    "accounts:mfa_setup": ("dashboard.view", "GET"),
    "accounts:mfa_confirm": ("dashboard.view", "POST"),
    "accounts:mfa_recovery": ("dashboard.view", "POST"),
    "accounts:mfa_verify": ("dashboard.view", "GET"),
    "accounts:mfa_disable": ("accounts.manage", "POST"),
    "encryption:index": ("encryption.view", "GET"),
    "encryption:disk": ("encryption.view", "GET"),
    "encryption:create": ("encryption.change", "POST"),
    "encryption:encrypt_existing": ("encryption.change", "POST"),
    "encryption:change_key": ("encryption.change", "POST"),
    "encryption:header_backup": ("encryption.change", "POST"),
    "encryption:escrow_export": ("encryption.keys", "POST"),
    "encryption:recovery_test": ("encryption.keys", "POST"),
    "encryption:key_restore": ("encryption.keys", "POST"),
    "encryption:destroy_stale": ("encryption.change", "POST"),
    "encryption:vm_start": ("vms.operate", "POST"),
    "encryption:vm_stop": ("vms.operate", "POST"),
    "encryption:vm_unlock": ("encryption.view", "GET"),
    "encryption:vm_unlock_policy": ("encryption.keys", "POST"),
    "encryption:vm_start_manual": ("encryption.keys", "POST"),
    "encryption:vm_passphrase_change": ("encryption.keys", "POST"),
    "encryption:unseal": ("encryption.keys", "POST"),
    "encryption:seal": ("encryption.keys", "POST"),
    "encryption:rotate": ("encryption.keys", "POST"),
    "monitoring:security": ("monitoring.view", "GET"),
    "monitoring:security_run": ("security.manage", "POST"),
    "monitoring:lynis_run": ("security.manage", "POST"),
    "monitoring:incident_plan": ("monitoring.view", "GET"),
    "monitoring:training": ("security.manage", "GET"),
    "monitoring:training_acknowledge": ("security.manage", "POST"),
    "monitoring:audit_rules": ("monitoring.view", "GET"),
    "monitoring:audit_rules_install": ("security.manage", "POST"),
    "monitoring:incident_plan_save": ("security.manage", "POST"),
    "monitoring:incident_plan_review": ("security.manage", "POST"),
}

# sample values for URL arguments; they name nothing that exists, so an allowed role
# reaches the view and gets a 404/400 from it, never a 403
SAMPLE_ARGS = {"int": 999999, "str": "no-such-thing", "slug": "no-such-thing", "path": "no/such", "uuid": None}


def _walk(resolver, prefix=""):
    for p in resolver.url_patterns:
        if isinstance(p, URLResolver):
            ns = f"{prefix}{p.namespace}:" if p.namespace else prefix
            yield from _walk(p, ns)
        elif isinstance(p, URLPattern):
            yield f"{prefix}{p.name}", p


def all_patterns(*, token_guarded: bool = False):
    """Every session URL (with token_guarded=True, also the token-guarded ones)."""
    return [
        (name, p)
        for name, p in _walk(get_resolver())
        if not name.startswith("djdt") and (token_guarded or name not in TOKEN_GUARDED)
    ]


def url_for(name, pattern):
    converters = pattern.pattern.converters
    kwargs = {}
    for key, conv in converters.items():
        kind = type(conv).__name__.replace("Converter", "").lower()
        kwargs[key] = SAMPLE_ARGS.get(kind, "x")
        if kind == "int":
            kwargs[key] = 999999
        elif kind == "uuid":
            kwargs[key] = "00000000-0000-0000-0000-000000000000"
    return reverse(name, kwargs=kwargs)


def test_every_url_is_in_the_policy_table():
    names = {name for name, _ in all_patterns(token_guarded=True)}
    missing = names - set(EXPECTED) - PUBLIC - set(TOKEN_GUARDED)
    assert not missing, f"URL names without an entry in EXPECTED (give the view a permission): {sorted(missing)}"
    stale = (set(EXPECTED) | set(TOKEN_GUARDED)) - names
    assert not stale, f"EXPECTED or TOKEN_GUARDED name URLs that no longer exist: {sorted(stale)}"


def test_every_view_declares_the_expected_permission():
    for name, pattern in all_patterns():
        if name in PUBLIC:
            continue
        view = pattern.callback
        declared = getattr(view, "portal_permission", None)
        inner = view
        while declared is None and getattr(inner, "__wrapped__", None) is not None:
            inner = inner.__wrapped__
            declared = getattr(inner, "portal_permission", None)
        assert declared == EXPECTED[name][0], f"{name}: view requires {declared!r}, policy says {EXPECTED[name][0]!r}"


@pytest.mark.django_db
def test_anonymous_is_sent_to_login_everywhere(client, host):
    for name, pattern in all_patterns():
        if name in PUBLIC:
            continue
        url = url_for(name, pattern)
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code == 302, f"{method.upper()} {url} answered {response.status_code}"
            assert response["Location"].startswith(reverse("login")), f"{url} redirects to {response['Location']}"


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "operator", "auditor", "viewer", "outsider"])
def test_each_role_gets_exactly_the_access_of_the_policy(client, personas, role, host):
    user = personas[role]
    granted = ROLE_PERMISSIONS.get(role, frozenset())
    client.force_login(user)
    for name, pattern in all_patterns():
        if name in PUBLIC:
            continue
        url = url_for(name, pattern)
        perm, method = EXPECTED[name]
        response = client.post(url, {}) if method == "POST" else client.get(url)
        if perm in granted:
            assert response.status_code != 403, f"{role} was refused {url} ({perm})"
        else:
            assert response.status_code == 403, f"{role} reached {url} ({perm}): {response.status_code}"


@pytest.mark.django_db
def test_state_changing_views_refuse_get(admin, client, host):
    client.force_login(admin)
    for name, pattern in all_patterns():
        if name in PUBLIC or EXPECTED[name][1] != "POST":
            continue
        assert client.get(url_for(name, pattern)).status_code == 405, f"{name} changes state but answers GET"


@pytest.mark.django_db
def test_token_guarded_urls_answer_only_their_token(admin, client, settings):
    """No session or role opens them, from the network or (loopback access off) from here:
    only the bearer token in their setting. Missing token 401, wrong token 403."""
    settings.METRICS_ALLOW_LOOPBACK = False
    patterns = dict(all_patterns(token_guarded=True))
    for name, setting in TOKEN_GUARDED.items():
        view = patterns[name].callback
        assert getattr(view, "portal_token_setting", None) == setting, f"{name} does not declare {setting}"
        assert getattr(view, "login_required", True) is False, f"{name} would send Prometheus to the login page"
        setattr(settings, setting, "the-right-token-0123456789")
        url = url_for(name, patterns[name])
        assert client.get(url).status_code == 401, f"anonymous reached {url}"
        client.force_login(admin)
        assert client.get(url).status_code == 401, f"an admin session without the token reached {url}"
        client.logout()
        assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
        assert client.get(url, HTTP_AUTHORIZATION="Bearer the-right-token-0123456789").status_code == 200
