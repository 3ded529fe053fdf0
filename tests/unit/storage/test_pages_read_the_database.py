"""The storage overview and the pool page read the state collector's rows: no libvirt call,
a constant number of queries, and a pool of thousands of volumes paginated with each
volume's VM named from its row (no nested loop over every user of every volume)."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Role
from apps.core.gateways.libvirt import connection as libvirt_connection
from apps.core.models import Host
from apps.storage.models import PoolState, VmDiskState, VolumeState
from apps.vms.models import VirtualMachine

pytestmark = pytest.mark.django_db
GIB = 1 << 30


@pytest.fixture
def no_libvirt(monkeypatch):
    calls = []
    monkeypatch.setattr(libvirt_connection, "call", lambda uri, what, fn: calls.append(what) or fn(None))
    return calls


@pytest.fixture
def lab():
    return Host.objects.create(name="lab", uri="test:///default", collected_at=timezone.now())


def fill(host: Host, vms: int, volumes_per_vm: int = 2, pool: str = "big") -> None:
    now = timezone.now()
    start = VirtualMachine.objects.filter(host=host).count()
    rows = VirtualMachine.objects.bulk_create(
        VirtualMachine(host=host, uuid=uuid.uuid4(), name=f"vm-{start + i:05d}", last_state="shut off", last_seen=now)
        for i in range(vms)
    )
    VmDiskState.objects.bulk_create(
        VmDiskState(vm=vm, state="shut off", provisioned=volumes_per_vm * GIB, allocation=GIB, collected_at=now)
        for vm in rows
    )
    VolumeState.objects.bulk_create(
        VolumeState(host=host, pool=pool, name=f"{vm.name}-{d}.qcow2", path=f"/p/{vm.name}-{d}.qcow2",
                    capacity=GIB, allocation=GIB // 2, vm=vm)
        for vm in rows for d in range(volumes_per_vm)
    )  # fmt: skip
    total = VolumeState.objects.filter(host=host, pool=pool).count()
    PoolState.objects.update_or_create(
        host=host, name=pool,
        defaults={"capacity": 100 * GIB, "allocation": 10 * GIB, "available": 90 * GIB, "provisioned": total * GIB,
                  "volume_allocation": total * GIB // 2, "volume_count": total, "collected_at": now},
    )  # fmt: skip


def count_queries(client, url: str, **params) -> int:
    client.get(url, params)  # warm: the first page view creates the defaults row
    statements = []
    with connection.execute_wrapper(lambda execute, sql, *a: statements.append(sql) or execute(sql, *a)):
        assert client.get(url, params).status_code == 200
    return len(statements)


def test_the_overview_makes_no_libvirt_call_and_constant_queries(client, viewer, lab, no_libvirt):
    client.force_login(viewer)
    fill(lab, 5)
    few = count_queries(client, reverse("storage:pools"))
    fill(lab, 100)
    many = count_queries(client, reverse("storage:pools"))
    assert no_libvirt == [] and many == few
    html = client.get(reverse("storage:pools"), {"page": 3}).content.decode()  # 50 VM rows a page
    assert 'data-pool="big"' in html and 'data-vm="vm-00104"' in html


def test_a_pool_page_pages_its_volumes_and_names_their_vms(client, viewer, lab, no_libvirt):
    client.force_login(viewer)
    fill(lab, 60, volumes_per_vm=5)  # 300 volumes
    url = reverse("storage:pool", args=[lab.name, "big"])
    few = count_queries(client, url)
    fill(lab, 600, volumes_per_vm=5)  # 3,300 volumes
    many = count_queries(client, url)
    assert no_libvirt == [] and many == few
    first = client.get(url).content.decode()
    assert first.count('data-volume="') == 100 and "(3300)" in first
    row = first.split('data-volume="vm-00000-0.qcow2"', 1)[1].split("</tr>", 1)[0]
    assert "vm-00000" in row  # the volume's VM, from its row
    last = client.get(url, {"page": 33}).content.decode()
    assert 'data-volume="vm-00659-4.qcow2"' in last and last.count('data-volume="') == 100


def test_pages_say_when_the_host_could_not_be_read(client, viewer, lab):
    client.force_login(viewer)
    fill(lab, 1)
    Host.objects.filter(pk=lab.pk).update(unreachable_since=timezone.now(), collect_error="Cannot connect")
    assert "Host unreachable since" in client.get(reverse("storage:pools")).content.decode()
    page = client.get(reverse("storage:pool", args=[lab.name, "big"])).content.decode()
    assert 'data-testid="stale-host"' in page and "Cannot connect" in page


def test_a_scoped_user_sees_no_pools_and_only_their_vms(client, make_user, lab, no_libvirt):
    fill(lab, 3)
    mine = VirtualMachine.objects.get(name="vm-00001")
    client.force_login(make_user(role=Role.VIEWER, scope="vm", vm=mine))
    html = client.get(reverse("storage:pools")).content.decode()
    assert 'data-vm="vm-00001"' in html and 'data-vm="vm-00000"' not in html and "data-pool=" not in html
    assert client.get(reverse("storage:pool", args=[lab.name, "big"])).status_code == 404


def test_the_overview_draws_one_page_of_vm_quota_rows(client, viewer, lab, no_libvirt):
    client.force_login(viewer)
    fill(lab, 120, volumes_per_vm=1)
    first = client.get(reverse("storage:pools")).content.decode()
    assert first.count('data-vm="') == 50 and "120 VMs" in first and "Page 1 of 3" in first
    assert 'data-pool="big"' in first  # the pools on every page
    third = client.get(reverse("storage:pools"), {"page": 3}).content.decode()
    assert third.count('data-vm="') == 20 and 'data-vm="vm-00119"' in third and 'data-pool="big"' in third
