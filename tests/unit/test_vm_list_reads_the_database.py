"""The VM list and the dashboard read the database only: no libvirt call per request, a
constant number of queries whatever the VM count, the user's scope applied first."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Role
from apps.core.gateways.libvirt import connection as libvirt_connection
from apps.core.models import Host
from apps.vms.models import VirtualMachine

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_libvirt(monkeypatch):
    """Every libvirt call goes through the gateway's connection.call: count them (any would be a failure)."""
    calls = []
    monkeypatch.setattr(libvirt_connection, "call", lambda uri, what, fn: calls.append(what) or fn(None))
    return calls


def make_vms(host: Host, n: int, start: int = 0, **fields) -> None:
    VirtualMachine.objects.bulk_create(
        VirtualMachine(host=host, uuid=uuid.uuid4(), name=f"vm-{i:04d}", last_state="running", vcpus=1,
                       memory_kib=65536, disk_capacity=1 << 30, disk_allocation=1 << 20,
                       last_seen=timezone.now(), **fields)
        for i in range(start, start + n)
    )  # fmt: skip


@pytest.fixture
def lab():
    return Host.objects.create(name="lab", uri="test:///default", collected_at=timezone.now())


def queries_for(client, url: str, **headers) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url, **headers).status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize("url", ["vms:list", "dashboard"])
def test_list_pages_make_no_libvirt_call_and_constant_queries(client, viewer, lab, no_libvirt, url):
    client.force_login(viewer)
    make_vms(lab, 10)
    few = queries_for(client, reverse(url))
    make_vms(lab, 200, start=10)
    many = queries_for(client, reverse(url))
    assert no_libvirt == []
    assert many == few, f"{url}: {few} queries for 10 VMs, {many} for 210"


def test_the_list_filters_sorts_and_pages_on_the_server(client, viewer, lab):
    client.force_login(viewer)
    make_vms(lab, 120)
    VirtualMachine.objects.filter(name="vm-0007").update(last_state="paused", zone="dmz")
    page = client.get(reverse("vms:list")).content.decode()
    assert page.count('data-vm="') == 50 and "120 VMs" in page and "Page 1 of 3" in page
    paused = client.get(reverse("vms:list"), {"state": "paused"}).content.decode()
    assert 'data-vm="vm-0007"' in paused and paused.count('data-vm="') == 1
    assert client.get(reverse("vms:list"), {"zone": "dmz"}).content.decode().count('data-vm="') == 1
    found = client.get(reverse("vms:list"), {"q": "vm-011"}).content.decode()
    assert found.count('data-vm="') == 10  # vm-0110 .. vm-0119
    last = client.get(reverse("vms:list"), {"sort": "-name"}).content.decode()
    assert last.index('data-vm="vm-0119"') < last.index('data-vm="vm-0118"')
    third = client.get(reverse("vms:list"), {"page": 3}).content.decode()
    assert third.count('data-vm="') == 20 and 'data-vm="vm-0119"' in third
    assert "sort=-name" in client.get(reverse("vms:list"), {"sort": "name"}).content.decode()  # the sort link flips


def test_a_scoped_user_sees_only_their_vms_and_counts(client, make_user, lab):
    make_vms(lab, 5)
    mine = VirtualMachine.objects.get(name="vm-0003")
    scoped = make_user(role=Role.VIEWER, scope="vm", vm=mine)
    client.force_login(scoped)
    page = client.get(reverse("vms:list")).content.decode()
    assert page.count('data-vm="') == 1 and 'data-vm="vm-0003"' in page
    assert "VMs you can see: 1" in client.get(reverse("dashboard")).content.decode()


def test_an_open_page_polls_cheaply_and_redraws_only_on_change(client, viewer, lab):
    client.force_login(viewer)
    make_vms(lab, 3)
    body = client.get(reverse("vms:list"), HTTP_HX_REQUEST="true").content.decode()
    poll = body.split('hx-get="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert client.get(poll, HTTP_HX_REQUEST="true").status_code == 204  # nothing changed
    VirtualMachine.objects.filter(name="vm-0001").update(last_state="paused", last_seen=timezone.now())
    changed = client.get(poll, HTTP_HX_REQUEST="true")
    assert changed.status_code == 200 and "paused" in changed.content.decode()


def test_an_unreachable_host_is_shown_stale_with_since_when(client, viewer, lab):
    client.force_login(viewer)
    make_vms(lab, 1)
    since = timezone.now()
    Host.objects.filter(pk=lab.pk).update(unreachable_since=since, collect_error="Cannot connect")
    page = client.get(reverse("vms:list")).content.decode()
    assert 'data-testid="stale-host"' in page and since.strftime("%Y-%m-%d %H:%M") in page
    assert "Cannot connect" in page and 'data-vm="vm-0000"' in page  # last known state still shown
    dashboard = client.get(reverse("dashboard")).content.decode()
    assert 'data-testid="stale-host"' in dashboard and since.strftime("%Y-%m-%d %H:%M") in dashboard


def test_a_stale_host_is_named_only_to_users_with_vms_on_it(client, make_user, lab):
    other = Host.objects.create(name="other", uri="test:///default", collected_at=timezone.now())
    make_vms(lab, 1)
    make_vms(other, 1, start=1)
    Host.objects.filter(pk=other.pk).update(unreachable_since=timezone.now(), collect_error="Cannot connect")
    client.force_login(make_user(role=Role.VIEWER, scope="vm", vm=VirtualMachine.objects.get(name="vm-0000")))
    assert 'data-testid="stale-host"' not in client.get(reverse("vms:list")).content.decode()
    client.force_login(make_user(role=Role.VIEWER, scope="vm", vm=VirtualMachine.objects.get(name="vm-0001")))
    assert "<strong>other</strong>" in client.get(reverse("vms:list")).content.decode()


def test_the_list_filters_encrypted_and_over_quota_vms(client, viewer, lab):
    from apps.encryption.models import EncryptedDisk
    from apps.storage.models import StorageAlert

    client.force_login(viewer)
    make_vms(lab, 4)
    enc, over = VirtualMachine.objects.get(name="vm-0001"), VirtualMachine.objects.get(name="vm-0002")
    EncryptedDisk.objects.create(host=lab, vm=enc, vm_uuid=enc.uuid, path="/images/x.img", key_id="k" * 32,
                                 state=EncryptedDisk.State.READY)  # fmt: skip
    now = timezone.now()
    alert = {"host": lab, "usage": 2, "limit": 1, "percent": 200, "raised_at": now, "updated_at": now}
    StorageAlert.objects.create(vm=over, level="breach", **alert)
    StorageAlert.objects.create(vm=enc, level="warning", **alert)  # a warning is not over the quota
    names = lambda **q: {  # noqa: E731
        r.split('"', 1)[0] for r in client.get(reverse("vms:list"), q).content.decode().split('data-vm="')[1:]
    }
    assert names(encrypted="yes") == {"vm-0001"}
    assert names(encrypted="no") == {"vm-0000", "vm-0002", "vm-0003"}
    assert names(over_quota="yes") == {"vm-0002"}
    assert names(over_quota="yes", encrypted="yes") == set()
    assert names(encrypted="maybe") == {"vm-0000", "vm-0001", "vm-0002", "vm-0003"}  # unknown value: no filter
