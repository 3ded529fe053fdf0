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
