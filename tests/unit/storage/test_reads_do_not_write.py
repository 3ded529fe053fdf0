"""Reads do not write: the storage read modules import no services, the defaults are read
without creating their row, and a VM lookup reads the database only (no libvirt call, no
inventory sync), whatever the page asking."""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest

from apps.accounts.models import Role
from apps.core.errors import NotFound
from apps.core.gateways import libvirt as gw
from apps.core.gateways.libvirt import connection
from apps.core.models import Host
from apps.storage.models import GIB, StorageDefaults
from apps.vms.models import VirtualMachine

STORAGE = Path(__file__).resolve().parents[3] / "apps" / "storage"
READS = ["selectors.py", "quota_rules.py", "trends.py", "disks.py", "templatetags/storage.py"]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
            names += ["." * node.level + (node.module or "") + "." + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


@pytest.mark.parametrize("module", READS)
def test_the_storage_reads_import_no_storage_service(module):
    imported = _imports(STORAGE / module)
    assert imported, "the module imports nothing: the check would prove nothing"
    assert [n for n in imported if "services" in n.split(".") and not n.startswith("apps.encryption")] == []


@pytest.mark.django_db
def test_reading_the_defaults_creates_no_row(settings, admin):
    from decimal import Decimal

    from apps.storage import services
    from apps.storage.quota_rules import defaults_read

    settings.STORAGE_DEFAULT_QUOTA_GIB = 42
    d = defaults_read()
    ratio = Decimal(str(settings.STORAGE_DEFAULT_MAX_OVERCOMMIT))
    assert (d.quota_bytes, d.version, d.max_overcommit) == (42 * GIB, 1, ratio)
    assert not StorageDefaults.objects.exists()
    services.defaults_update(actor=admin, quota_bytes=7 * GIB, alert_percent=60, breach_action="alert",
                             max_overcommit=Decimal("2"), reserve_percent=5, expected_version=d.version)  # fmt: skip
    assert (defaults_read().quota_bytes, defaults_read().version) == (7 * GIB, 2)


@pytest.mark.django_db
def test_a_vm_lookup_reads_the_database_only(monkeypatch, make_user):
    from apps.vms.services import vm_for

    host = Host.objects.create(name="far", uri="qemu+unix:///system?socket=/nonexistent/sock")
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="known", present=True)
    user = make_user(role=Role.VIEWER)

    def no_libvirt(*args, **kwargs):
        raise AssertionError("a lookup called libvirt")

    monkeypatch.setattr(connection, "call", no_libvirt)
    monkeypatch.setattr(gw, "domain_list", no_libvirt)
    assert vm_for(user, "far", "known") == vm
    before = VirtualMachine.objects.count()
    with pytest.raises(NotFound, match="No VM named 'defined-a-moment-ago'"):
        vm_for(user, "far", "defined-a-moment-ago")
    assert VirtualMachine.objects.count() == before
