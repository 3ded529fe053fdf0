"""Scopes resolve through the object: VM -> zone -> host -> global."""

import uuid

import pytest

from apps.accounts.models import Role
from apps.accounts.permissions import has_perm, scope_filter
from apps.core.models import Host
from apps.vms.models import VirtualMachine

pytestmark = pytest.mark.django_db


@pytest.fixture
def estate():
    h1 = Host.objects.create(name="h1", uri="test:///default")
    h2 = Host.objects.create(name="h2", uri="test:///default")
    vms = {
        "a": VirtualMachine.objects.create(host=h1, uuid=uuid.uuid4(), name="a", zone="secure"),
        "b": VirtualMachine.objects.create(host=h1, uuid=uuid.uuid4(), name="b", zone="untrusted"),
        "c": VirtualMachine.objects.create(host=h2, uuid=uuid.uuid4(), name="c", zone="secure"),
    }
    return h1, h2, vms


def visible(user, perm="vms.view"):
    q = scope_filter(user, perm)
    qs = VirtualMachine.objects.all() if q is None else VirtualMachine.objects.filter(q)
    return sorted(qs.values_list("name", flat=True))


def test_global_role_covers_everything(make_user, estate):
    _, _, vms = estate
    op = make_user(role=Role.OPERATOR)
    assert all(has_perm(op, "vms.operate", vm) for vm in vms.values())
    assert visible(op) == ["a", "b", "c"]


def test_host_scope(make_user, estate):
    h1, h2, vms = estate
    op = make_user(role=Role.OPERATOR, scope="host", host=h1)
    assert has_perm(op, "vms.operate", vms["a"]) and has_perm(op, "vms.operate", vms["b"])
    assert not has_perm(op, "vms.operate", vms["c"])
    assert has_perm(op, "vms.view", h1) and not has_perm(op, "vms.view", h2)
    assert visible(op) == ["a", "b"]


def test_zone_scope(make_user, estate):
    _, _, vms = estate
    op = make_user(role=Role.OPERATOR, scope="zone", zone="secure")
    assert [n for n, vm in vms.items() if has_perm(op, "vms.operate", vm)] == ["a", "c"]
    assert visible(op) == ["a", "c"]


def test_vm_scope_and_role_limits(make_user, estate):
    _, _, vms = estate
    viewer = make_user(role=Role.VIEWER, scope="vm", vm=vms["b"])
    assert has_perm(viewer, "vms.view", vms["b"]) and not has_perm(viewer, "vms.view", vms["a"])
    assert not has_perm(viewer, "vms.operate", vms["b"])  # a viewer never operates
    assert visible(viewer) == ["b"]
    assert visible(viewer, "vms.operate") == []


def test_auditor_reads_everything_and_changes_nothing(make_user, estate):
    _, _, vms = estate
    auditor = make_user(role=Role.AUDITOR)
    assert has_perm(auditor, "audit.view") and has_perm(auditor, "vms.view", vms["a"])
    assert not any(has_perm(auditor, p, vms["a"]) for p in ("vms.operate", "vms.snapshot", "storage.change"))


def test_disabled_users_have_no_permissions(make_user, estate):
    _, _, vms = estate
    admin = make_user(role=Role.ADMIN)
    admin.is_active = False
    assert not has_perm(admin, "vms.view", vms["a"])


def test_unknown_permissions_are_a_programming_error(make_user):
    with pytest.raises(ValueError):
        has_perm(make_user(role=Role.ADMIN), "vms.teleport")


def test_restrict_filters_rows_that_reach_their_vm_through_a_field(make_user, estate):
    from apps.accounts.permissions import restrict
    from apps.storage.models import VmQuota

    _, _, vms = estate
    for vm in vms.values():
        VmQuota.objects.create(vm=vm)
    op = make_user(role=Role.OPERATOR, scope="zone", zone="secure")
    assert sorted(restrict(VmQuota.objects.all(), op, "storage.change").values_list("vm__name", flat=True)) == [
        "a",
        "c",
    ]
    assert sorted(restrict(VirtualMachine.objects.all(), op, "vms.view").values_list("name", flat=True)) == ["a", "c"]
    viewer = make_user(role=Role.VIEWER)
    assert not restrict(VmQuota.objects.all(), viewer, "storage.change").exists()  # viewers never change
    assert restrict(VmQuota.objects.all(), None, "storage.change").count() == 3  # the system sees all


def test_authorize_trusts_the_system_actor_and_audits_a_denial(make_user, estate):
    from django.core.exceptions import PermissionDenied

    from apps.accounts.permissions import authorize
    from apps.audit.models import AuditEvent

    _, _, vms = estate
    authorize(None, "vms.operate", vms["a"], action="vm.suspend")  # the system: allowed, nothing raised
    viewer = make_user(role=Role.VIEWER)
    with pytest.raises(PermissionDenied):
        authorize(viewer, "vms.operate", vms["a"], action="vm.suspend")
    event = AuditEvent.objects.get(action="vm.suspend")
    assert (event.outcome, event.actor_name, event.target_name) == ("denied", viewer.username, "a")


def test_can_tag_asks_for_the_object_not_the_role(make_user, estate, rf):
    from django.template import Context, Template

    _, _, vms = estate
    op = make_user(role=Role.OPERATOR, scope="vm", vm=vms["a"])
    request = rf.get("/")
    request.user = op
    tpl = Template('{% load portal %}{% can "storage.change" vm as ok %}{{ ok|yesno:"form,none" }}')
    assert tpl.render(Context({"request": request, "vm": vms["a"]})) == "form"
    assert tpl.render(Context({"request": request, "vm": vms["b"]})) == "none"
