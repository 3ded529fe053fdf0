"""Several hosts from the start: adding one checks the connection; each VM belongs to one."""

import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.audit.models import AuditEvent
from apps.core.models import Host
from apps.core.services import host_create
from apps.vms.services import inventory_for

pytestmark = pytest.mark.django_db


def test_admin_adds_a_second_host_and_its_vms_appear(admin, host):
    second = host_create(actor=admin, name="lab-2", uri="test:///default")
    names = {(vm.host.name, vm.name) for vm in inventory_for(admin)}
    assert ("lab-2", "test") in names
    assert AuditEvent.objects.get(action="core.host.create").target_name == second.name


def test_unreachable_or_malformed_hosts_are_refused(admin):
    with pytest.raises(Exception, match="Cannot connect"):
        host_create(actor=admin, name="ghost", uri="qemu+unix:///system?socket=/nonexistent")
    with pytest.raises(Exception, match="Invalid libvirt URI"):
        host_create(actor=admin, name="bad", uri="qemu:///system; rm -rf /")
    with pytest.raises(Exception, match="Invalid host name"):
        host_create(actor=admin, name="<evil>", uri="test:///default")
    assert not Host.objects.exists()
    assert AuditEvent.objects.filter(action="core.host.create", outcome="failed").count() == 3


def test_only_admins_add_hosts(operator):
    with pytest.raises(PermissionDenied):
        host_create(actor=operator, name="lab-3", uri="test:///default")
    assert not Host.objects.exists()


def test_host_add_command(admin):
    call_command("host_add", "lab-4", "test:///default", "--as", admin.username)
    assert Host.objects.filter(name="lab-4").exists()
    with pytest.raises(CommandError, match="already exists"):
        call_command("host_add", "lab-4", "test:///default", "--as", admin.username)


def test_a_libvirt_daemon_is_added_once(admin):
    """Two host rows on one URI would read the same daemon twice and list its VMs twice."""
    host_create(actor=admin, name="lab-5", uri="test:///default")
    with pytest.raises(Exception, match="Host 'lab-5' already reads test:///default"):
        host_create(actor=admin, name="lab-6", uri="test:///default")
    assert list(Host.objects.values_list("name", flat=True)) == ["lab-5"]
    refused = AuditEvent.objects.get(action="core.host.create", outcome="failed")
    assert refused.target_name == "lab-6"
