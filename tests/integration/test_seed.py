"""The demo seed of `make run`: idempotent, one user per role, three VMs of which one runs."""

import io
import stat
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command

from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from apps.core.gateways import libvirt_gw as gw
from apps.vms.models import VirtualMachine

pytestmark = [pytest.mark.django_db, pytest.mark.libvirt]


def test_seed_demo_twice_gives_the_same_demo(libvirt_uri):
    first, second = io.StringIO(), io.StringIO()
    call_command("seed_demo", stdout=first)
    call_command("seed_demo", stdout=second)
    assert first.getvalue() == second.getvalue()  # same users, same passwords, nothing new
    users = get_user_model().objects.filter(username__in=Role.values)
    assert sorted(u.role_assignments.get().role for u in users) == sorted(Role.values)
    demo = VirtualMachine.objects.filter(name__startswith="demo-", present=True)
    assert sorted(vm.name for vm in demo) == ["demo-build", "demo-db", "demo-web"]
    assert gw.domain_state(libvirt_uri, "demo-web") == "running"
    networks = {n.name: n for n in gw.list_networks(libvirt_uri)}
    assert networks["portal-secure"].forward_mode == networks["portal-untrusted"].forward_mode == "isolated"
    creds = Path(settings.VAR_DIR) / "demo-credentials.txt"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    password = dict(line.split() for line in creds.read_text().splitlines())["auditor"]
    assert users.get(username="auditor").check_password(password)
    seeded = AuditEvent.objects.filter(action="core.demo.seed")
    assert seeded.count() == 2 and {e.actor_name for e in seeded} == {"system"}
    assert "password" not in str(seeded.first().params).lower()
