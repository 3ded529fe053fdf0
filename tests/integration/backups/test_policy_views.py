"""Backup policies edited on the Backups page: a Django form that refuses bad input (audited,
nothing changed), a change audited with the values before and after, re-authentication for
an edit, and only a global role may edit (a policy may name any VM and destination)."""

from __future__ import annotations

from django.urls import reverse

from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from apps.backups.models import BackupPolicy
from tests.conftest import reauthenticate

HX = {"HTTP_HX_REQUEST": "true"}


def fields(destination: str, **over) -> dict:
    data = {"selector": "all", "zone": "", "vm_names": "", "destination": destination, "interval_hours": "24",
            "keep_last": "7", "keep_daily": "7", "keep_weekly": "4", "keep_monthly": "6",
            "verify_max_age_days": "7", "enabled": "on"}  # fmt: skip
    data.update(over)
    return data


def test_policies_are_created_and_edited_on_the_page_audited_before_and_after(client, operator, destination):
    client.force_login(operator)
    page = client.get(reverse("backups:index")).content.decode()
    assert 'data-testid="policy-new"' in page and "No policies" in page

    response = client.post(reverse("backups:policy_create"), {"name": "nightly", **fields(destination)}, **HX)

    assert response.status_code == 200, response.content.decode()[:500]
    policy = BackupPolicy.objects.get(name="nightly")
    assert (policy.selector, policy.interval_hours, policy.keep_last, policy.enabled) == ("all", 24, 7, True)
    assert 'data-testid="policy-edit-nightly"' in response.content.decode()

    url = reverse("backups:policy_update", args=[policy.pk])
    response = client.post(url, fields(destination, selector="names", vm_names="web1"))
    assert response.status_code == 302 and reverse("accounts:reauth") in response["Location"]  # edits re-authenticate
    reauthenticate(client)
    response = client.post(url, fields(destination, selector="names", vm_names="web1, db1", interval_hours="6",
                                       keep_last="3", enabled=""), **HX)  # fmt: skip

    assert response.status_code == 200
    policy.refresh_from_db()
    assert (policy.selector, policy.vm_names, policy.interval_hours, policy.keep_last, policy.enabled) == (
        "names", ["web1", "db1"], 6, 3, False)  # fmt: skip
    event = AuditEvent.objects.get(action="backups.policy.update", outcome="success")
    assert event.params["before"] == {"enabled": True, "interval_hours": 24, "keep_last": 7, "selector": "all",
                                      "vm_names": []}  # fmt: skip
    assert event.params["after"] == {"enabled": False, "interval_hours": 6, "keep_last": 3, "selector": "names",
                                     "vm_names": ["web1", "db1"]}  # fmt: skip


def test_bad_policy_input_is_refused_audited_and_changes_nothing(client, operator, destination):
    client.force_login(operator)
    reauthenticate(client)
    policy = BackupPolicy.objects.create(name="base", destination=destination)
    url = reverse("backups:policy_update", args=[policy.pk])
    bad = [
        (fields("/etc/elsewhere"), "outside the allowed backup roots"),
        (fields(destination, keep_last="0", keep_daily="0", keep_weekly="0", keep_monthly="0"), "must keep"),
        (fields(destination, selector="zone", zone=""), "Name the zone"),
        (fields(destination, selector="names", vm_names=""), "Name at least one VM"),
        (fields(destination, selector="names", vm_names="ok,bad name;rm"), "is not a VM name"),
        (fields(destination, interval_hours="0"), "greater than or equal to 1"),
        (fields(destination, selector="every"), "Select a valid choice"),
    ]
    for data, message in bad:
        response = client.post(url, data, **HX)
        assert response.status_code == 400, message
        assert message in response.content.decode(), message
    response = client.post(reverse("backups:policy_create"), {"name": "../x", **fields(destination)}, **HX)
    assert response.status_code == 400

    policy.refresh_from_db()
    assert (policy.selector, policy.keep_last, policy.interval_hours, policy.destination) == ("all", 7, 24, destination)
    assert AuditEvent.objects.filter(action="backups.policy.update", outcome="failed").count() == len(bad)
    assert AuditEvent.objects.filter(action="backups.policy.create", outcome="failed").count() == 1
    assert not AuditEvent.objects.filter(action="backups.policy.update", outcome="success").exists()


def test_only_a_global_role_edits_policies(client, auditor, make_user, shut_vm_with_data, destination):
    vm, _ = shut_vm_with_data
    policy = BackupPolicy.objects.create(name="base", destination=destination)
    url = reverse("backups:policy_update", args=[policy.pk])
    client.force_login(auditor)
    assert 'data-testid="policy-edit-base"' not in client.get(reverse("backups:index")).content.decode()
    assert client.post(url, fields(destination, keep_last="1")).status_code == 403
    scoped = make_user("vm-scoped-op", Role.OPERATOR, scope="vm", vm=vm)  # may back up one VM, not edit policies
    client.force_login(scoped)
    reauthenticate(client)
    assert 'data-testid="policy-edit-base"' not in client.get(reverse("backups:index")).content.decode()
    assert client.post(url, fields(destination, keep_last="1"), **HX).status_code == 403
    policy.refresh_from_db()
    assert policy.keep_last == 7
