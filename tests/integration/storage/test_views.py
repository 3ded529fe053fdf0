"""The storage pages through the Django test client: who sees what, forms, HTMX partials,
refusals shown to people, confirmation of destructive actions."""

import pytest
from django.urls import reverse

from apps.core.models import Job
from apps.storage import services
from apps.storage.models import GIB, StorageAlert, VmQuota
from apps.storage.quota_rules import defaults_read
from tests.conftest import reauthenticate

from .conftest import events, overfill

pytestmark = pytest.mark.libvirt


def _url(name, vm, *extra):
    return reverse(f"storage:{name}", args=[vm.host.name, vm.name, *extra])


def test_the_overview_shows_pools_thin_provisioning_and_vm_quotas(client, viewer, off_vm, test_pool):
    client.force_login(viewer)
    response = client.get(reverse("storage:pools"))
    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-pool="{test_pool}"' in html
    assert "Promised (sum of volume capacities)" in html
    assert f'data-vm="{off_vm.name}"' in html
    assert 'data-testid="usage-bar"' in html
    assert "style=" not in html and "<script>" not in html  # CSP: no inline style or script


def test_vm_and_pool_pages_render(client, viewer, off_vm, host, test_pool):
    client.force_login(viewer)
    response = client.get(_url("vm", off_vm))
    assert response.status_code == 200
    assert 'data-disk="vda"' in response.content.decode()
    assert "Save quota" not in response.content.decode()  # a viewer gets no forms
    assert client.get(reverse("storage:pool", args=[host.name, test_pool])).status_code == 200
    assert client.get(reverse("storage:pool", args=[host.name, "no-such-pool"])).status_code == 404


def test_an_operator_sets_a_quota_through_htmx(client, operator, off_vm):
    client.force_login(operator)
    response = client.post(
        _url("quota_set", off_vm),
        {"limit_gib": "12", "alert_percent": "75", "breach_action": "refuse", "version": "0"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    assert 'id="vm-storage"' in response.content.decode()
    assert "<html" not in response.content.decode()  # the partial only
    quota = VmQuota.objects.get(vm=off_vm)
    assert (quota.limit_bytes, quota.alert_percent, quota.breach_action) == (12 * GIB, 75, "refuse")
    # the same form again, from the now stale page: refused, not overwritten
    response = client.post(_url("quota_set", off_vm), {"limit_gib": "13", "version": "0"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 409
    assert "changed by oscar-operator" in response.content.decode()
    assert response["HX-Retarget"] == "#toasts"


def test_bad_input_shows_a_message_not_a_500(client, operator, off_vm):
    client.force_login(operator)
    response = client.post(_url("quota_set", off_vm), {"limit_gib": "-1"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert "more than 0 GiB" in response.content.decode()
    response = client.post(_url("quota_expand", off_vm), {"by_gib": "ten"})
    assert response.status_code == 400
    assert "not a number" in response.content.decode()


def test_deleting_a_disk_needs_a_recent_reauthentication_and_the_confirmation(client, operator, off_vm):
    client.force_login(operator)
    response = client.post(_url("volume_delete", off_vm, "vda"), {"confirm": "yes"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 204 and response["HX-Redirect"].startswith(reverse("accounts:reauth"))
    assert events("auth.reauth.required", outcome="denied") and not Job.objects.exists()
    reauthenticate(client)
    response = client.post(_url("volume_delete", off_vm, "vda"), {}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert "confirm" in response.content.decode()
    response = client.post(_url("volume_delete", off_vm, "vda"), {"confirm": "yes"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and Job.objects.get().kind == "storage.volume.delete"
    html = client.get(_url("vm", off_vm)).content.decode()
    assert 'hx-confirm="Delete disk vda' in html and 'data-confirm="Delete disk vda' in html


def test_acknowledge_from_the_alert_list(client, operator, small_vm):
    off_vm = small_vm
    overfill(off_vm)
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=int(0.25 * GIB), confirmed=True)
    services.storage_check(actor=None)
    alert = StorageAlert.objects.get(vm=off_vm)
    client.force_login(operator)
    html = client.get(reverse("storage:alerts")).content.decode()
    assert f'data-alert="{alert.pk}"' in html
    assert 'data-testid="storage-alert-badge"' in html
    response = client.post(reverse("storage:alert_ack", args=[alert.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "oscar-operator" in response.content.decode()
    assert client.post(reverse("storage:alert_ack", args=[alert.pk])).status_code == 409
    assert len(events("storage.alert.acknowledge", outcome="success")) == 1


def test_defaults_are_for_admins(client, admin, operator, host):
    client.force_login(operator)
    assert client.get(reverse("storage:settings")).status_code == 403
    client.force_login(admin)
    assert client.get(reverse("storage:settings")).status_code == 200
    version = defaults_read().version
    response = client.post(
        reverse("storage:settings_save"),
        {
            "quota_gib": "50",
            "alert_percent": "85",
            "breach_action": "refuse",
            "max_overcommit": "2.5",
            "reserve_percent": "15",
            "version": str(version),
        },
    )
    assert response.status_code == 302
    defaults = defaults_read()
    assert (defaults.quota_bytes, defaults.alert_percent, str(defaults.max_overcommit)) == (50 * GIB, 85, "2.50")
    response = client.post(reverse("storage:settings_save"), {"quota_gib": "1", "alert_percent": "150"})
    assert response.status_code == 400
    assert defaults_read().quota_bytes == 50 * GIB


def test_a_vm_scoped_operator_sees_and_changes_only_that_vm(client, make_user, host, make_domain):
    from apps.accounts.models import Role
    from apps.vms.collector import host_collect
    from apps.vms.models import VirtualMachine

    mine, other = make_domain(running=False), make_domain(running=False)
    host_collect(host)  # the state collector's read: what the pages show
    mine_vm = VirtualMachine.objects.select_related("host").get(host=host, name=mine)
    other_vm = VirtualMachine.objects.select_related("host").get(host=host, name=other)
    user = make_user(role=Role.OPERATOR, scope="vm", vm=mine_vm)
    client.force_login(user)
    html = client.get(reverse("storage:pools")).content.decode()
    assert f'data-vm="{mine}"' in html and f'data-vm="{other}"' not in html
    assert "data-pool=" not in html  # pools belong to the host, outside this user's scope
    assert client.post(_url("quota_set", other_vm), {"limit_gib": "5", "version": "0"}).status_code == 404
    assert client.post(_url("quota_set", mine_vm), {"limit_gib": "5", "version": "0"}).status_code == 302
    assert not VmQuota.objects.filter(vm=other_vm).exists()


def test_usage_history_is_charted_with_a_projection(client, viewer, off_vm, host, test_pool):
    from datetime import timedelta

    from django.utils import timezone

    from apps.storage.models import UsageSample

    now = timezone.now()
    UsageSample.objects.bulk_create(
        UsageSample(
            host=host, vm=off_vm, at=now - timedelta(days=d), allocation=(10 - d) * GIB, provisioned=0, limit=20 * GIB
        )
        for d in range(10, 0, -1)
    )
    client.force_login(viewer)
    html = client.get(_url("vm", off_vm)).content.decode()
    assert "<polyline points=" in html
    assert "Full in about 11 days" in html


@pytest.mark.parametrize("version", ["\u00b2", "1x", "-1", "", None, "\u0663"])
def test_a_malformed_or_missing_version_is_refused_not_a_500(client, operator, off_vm, version):
    client.force_login(operator)
    data = {"limit_gib": "12"} if version is None else {"limit_gib": "12", "version": version}
    response = client.post(_url("quota_set", off_vm), data, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="vm-storage"' in html and "<html" not in html  # the partial, re-rendered
    assert 'data-testid="quota-errors"' in html and "reload the page" in html
    assert not VmQuota.objects.filter(vm=off_vm).exists()
    (event,) = events("storage.quota.set")
    assert (event.outcome, event.actor_name) == ("failed", operator.username)


def test_bad_quota_fields_rerender_the_form_with_their_errors(client, operator, viewer, off_vm):
    client.force_login(operator)
    response = client.post(
        _url("quota_set", off_vm),
        {"limit_gib": "\u00b2", "alert_percent": "\u00b2", "version": "0"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "Hard limit (GiB)</strong>: The quota" in html and "not a number of GiB" in html
    assert "Alert at (%)</strong>: The alert threshold must be a whole percentage" in html
    assert 'aria-invalid="true"' in html
    assert not VmQuota.objects.exists()
    # no permission: refused as such (403), not as bad input
    client.force_login(viewer)
    assert client.post(_url("quota_set", off_vm), {"limit_gib": "x", "version": "0"}).status_code == 403
    assert [e.outcome for e in events("storage.quota.set")] == ["failed"]
    assert events("page.quota_set", outcome="denied")[0].actor_name == viewer.username


def test_the_defaults_form_refuses_a_malformed_version_and_bad_numbers(client, admin):
    client.force_login(admin)
    good = {
        "quota_gib": "50",
        "alert_percent": "85",
        "breach_action": "refuse",
        "max_overcommit": "2.5",
        "reserve_percent": "15",
    }
    before = defaults_read()
    for version in ("\u00b2", "", "v1"):
        response = client.post(reverse("storage:settings_save"), {**good, "version": version})
        assert response.status_code == 400
        assert "reload the page" in response.content.decode()
    response = client.post(
        reverse("storage:settings_save"), {**good, "reserve_percent": "\u00b2", "version": str(before.version)}
    )
    assert response.status_code == 400
    assert 'data-testid="defaults-errors"' in response.content.decode()
    after = defaults_read()
    assert (after.version, after.quota_bytes) == (before.version, before.quota_bytes)
    assert [e.outcome for e in events("storage.settings.update")] == ["failed"] * 4


def test_pool_limits_and_volume_sizes_are_parsed_by_forms(client, admin, operator, off_vm, host, test_pool):
    client.force_login(admin)
    response = client.post(reverse("storage:pool_limits", args=[host.name, test_pool]), {"reserve_percent": "\u00b2"})
    assert response.status_code == 400
    assert 'data-testid="pool-limit-errors"' in response.content.decode()
    client.force_login(operator)
    response = client.post(_url("volume_create", off_vm), {"size_gib": "\u00b2"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert "not a number of GiB" in response.content.decode()
    response = client.post(_url("volume_resize", off_vm, "vda"), {"size_gib": ""}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert [e.outcome for e in events("storage.volume.create")] == ["failed"]
    assert [e.outcome for e in events("storage.volume.resize")] == ["failed"]


def test_the_page_expands_to_a_size_and_says_so(client, operator, off_vm):
    client.force_login(operator)
    html = client.get(_url("vm", off_vm)).content.decode()
    assert "Expand to (GiB, the new hard limit)" in html
    assert "caps the disks&#x27; provisioned size" in html or "caps the disks' provisioned size" in html
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=20 * GIB)
    response = client.post(_url("quota_expand", off_vm), {"to_gib": "30"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert VmQuota.objects.get(vm=off_vm).limit_bytes == 30 * GIB
    response = client.post(_url("quota_expand", off_vm), {"to_gib": "25"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert "would shrink it" in response.content.decode()
    response = client.post(_url("quota_expand", off_vm), {"by_gib": "2"}, HTTP_HX_REQUEST="true")
    assert VmQuota.objects.get(vm=off_vm).limit_bytes == 32 * GIB
    response = client.post(_url("quota_expand", off_vm), {"to_gib": "40", "by_gib": "2"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert 'data-testid="expand-errors"' in response.content.decode()
    assert VmQuota.objects.get(vm=off_vm).limit_bytes == 32 * GIB


def test_an_operator_of_one_vm_gets_the_forms_on_that_vm_only(client, make_user, host, off_vm, make_domain):
    """The forms follow the permission over this VM (the question the service asks), not
    whether the user holds storage.change somewhere."""
    from apps.accounts.models import Role, RoleAssignment
    from apps.vms.collector import host_collect

    other = make_domain()
    host_collect(host)
    user = make_user(role=Role.OPERATOR, scope="vm", vm=off_vm)
    RoleAssignment.objects.create(user=user, role=Role.VIEWER, scope="global")
    client.force_login(user)
    mine = client.get(_url("vm", off_vm)).content.decode()
    assert 'data-testid="quota-form"' in mine and "Resize" in mine and "New volume" in mine
    response = client.get(reverse("storage:vm", args=[host.name, other]))
    assert response.status_code == 200 and 'data-disk="vda"' in response.content.decode()
    theirs = response.content.decode()
    assert 'data-testid="quota-form"' not in theirs and "Resize" not in theirs and "New volume" not in theirs
