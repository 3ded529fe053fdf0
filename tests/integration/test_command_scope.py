"""The commands' `--as USER` answer for a VM outside that user's scope exactly as the pages
do: "not found", like a VM that does not exist, and the refused lookup is audited. A
"no permission" would confirm that the VM exists."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from apps.vms.models import VirtualMachine
from apps.vms.services import inventory_sync

pytestmark = pytest.mark.libvirt

COMMANDS = {
    "storage_quota": lambda vm: ["get", vm],
    "vm_encryption": lambda vm: ["--no-wait", "header-backup", vm],
}


@pytest.fixture
def two_vms(host, make_domain):
    mine, theirs = make_domain(), make_domain()
    inventory_sync(host)
    return VirtualMachine.objects.get(host=host, name=mine), VirtualMachine.objects.get(host=host, name=theirs)


def _error(command: str, *args) -> str:
    with pytest.raises(CommandError) as exc:
        call_command(command, *args, stdout=StringIO(), stderr=StringIO())
    return str(exc.value)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_vm_outside_the_scope_is_not_found_like_a_missing_one(client, make_user, two_vms, command):
    mine, theirs = two_vms
    scoped = make_user(role=Role.OPERATOR, scope="vm", vm=mine)
    verb = COMMANDS[command]

    hidden = _error(command, "--as", scoped.username, *verb(theirs.name))
    missing = _error(command, "--as", scoped.username, *verb("no-such-vm"))
    assert hidden == missing.replace("no-such-vm", theirs.name)
    assert hidden == f"No VM named {theirs.name!r} on host {theirs.host.name!r} that you can see."
    assert "permission" not in hidden

    refused = AuditEvent.objects.filter(action="vms.vm.lookup").order_by("id")
    assert [(e.outcome, e.actor_name, e.target_name) for e in refused] == [
        ("denied", scoped.username, theirs.name),  # a VM that exists, outside the scope
        ("failed", scoped.username, f"{theirs.host.name}/no-such-vm"),
    ]

    client.force_login(scoped)  # the pages give the same answer
    page = client.get(reverse("storage:vm", args=[theirs.host.name, theirs.name]))
    assert page.status_code == 404 and hidden in page.content.decode().replace("&#x27;", "'")


def test_the_users_own_vm_is_found(make_user, two_vms):
    mine, _ = two_vms
    scoped = make_user(role=Role.OPERATOR, scope="vm", vm=mine)
    out = StringIO()
    call_command("storage_quota", "--as", scoped.username, "get", mine.name, stdout=out)
    assert out.getvalue().startswith(f"{mine.name}: quota ")
    assert f"{mine.name} has no encrypted disk" in _error(
        "vm_encryption", "--as", scoped.username, "--no-wait", "header-backup", mine.name
    )
    assert not AuditEvent.objects.filter(action="vms.vm.lookup").exists()
