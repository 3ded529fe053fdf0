"""The demo seed of `make run`: idempotent, one user per role, three VMs of which one runs,
its pool in the image directory; a demo pool an earlier clone left elsewhere is reused or
defined again, and either way said."""

import io
import os
import stat
import tempfile
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings

from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from apps.core.gateways import libvirt as gw
from apps.core.gateways.libvirt import domain_xml, network_remove
from apps.core.management.commands import seed_demo
from apps.vms.models import VirtualMachine

pytestmark = [pytest.mark.django_db, pytest.mark.libvirt]


@pytest.fixture
def demo(libvirt_uri, monkeypatch, tmp_path):
    """The seed under names of this test only (the real demo and other runs stay untouched),
    its credentials in a temporary state directory; every libvirt object removed after."""
    tag = uuid.uuid4().hex[:6]
    names = {"pool": f"tpool-demo-{tag}", "web": f"tvm-{tag}-web", "db": f"tvm-{tag}-db", "build": f"tvm-{tag}-build"}
    networks = {f"tnet-{tag}-sec": f"vbr{tag}s", f"tnet-{tag}-unt": f"vbr{tag}u"}
    secure, untrusted = networks
    monkeypatch.setattr(seed_demo, "POOL", names["pool"])
    monkeypatch.setattr(seed_demo, "NETWORKS", networks)
    monkeypatch.setattr(
        seed_demo,
        "VMS",
        [(names["web"], "untrusted", untrusted, True), (names["db"], "secure", secure, False),
         (names["build"], "default", secure, False)],
    )  # fmt: skip
    with override_settings(VAR_DIR=tmp_path):
        yield names
    for vm in (names["web"], names["db"], names["build"]):
        try:
            gw.domain_undefine(libvirt_uri, vm)
        except Exception:
            pass
    for remove, objects in ((gw.pool_remove, [names["pool"]]), (network_remove, list(networks))):
        for name in objects:
            try:
                remove(libvirt_uri, name)
            except Exception:
                pass


def seed() -> str:
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def pool_path(uri: str, name: str) -> Path:
    return Path(next(p.path for p in gw.pool_list(uri) if p.name == name))


def disk_of(uri: str, vm: str) -> Path:
    return Path(gw.domain_get(uri, vm).disks[0].path)


def test_seed_demo_twice_gives_the_same_demo(libvirt_uri, demo):
    first, second = seed(), seed()
    assert first == second  # same users, same passwords, nothing new, nothing to say
    users = get_user_model().objects.filter(username__in=Role.values)
    assert sorted(u.role_assignments.get().role for u in users) == sorted(Role.values)
    seeded = VirtualMachine.objects.filter(name__startswith=demo["web"][:10], present=True)
    assert sorted(vm.name for vm in seeded) == sorted([demo["web"], demo["db"], demo["build"]])
    assert gw.domain_state(libvirt_uri, demo["web"]) == "running"
    networks = {n.name: n for n in gw.network_list(libvirt_uri)}
    assert {networks[n].forward_mode for n in seed_demo.NETWORKS} == {"isolated"}
    assert pool_path(libvirt_uri, demo["pool"]) == settings.IMAGE_DIR / "demo"
    creds = Path(settings.VAR_DIR) / "demo-credentials.txt"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    password = dict(line.split() for line in creds.read_text().splitlines())["auditor"]
    assert users.get(username="auditor").check_password(password)
    events = AuditEvent.objects.filter(action="core.demo.seed")
    assert events.count() == 2 and {e.actor_name for e in events} == {"system"}
    assert events.first().params["pool_path"] == str(settings.IMAGE_DIR / "demo")
    assert events.first().params["notices"] == []
    assert "password" not in str(events.first().params).lower()


def test_a_demo_pool_an_earlier_clone_left_with_images_is_reused_and_said(libvirt_uri, demo):
    old = settings.IMAGE_DIR / "earlier-clone-demo"  # QEMU can reach it
    gw.pool_ensure_dir(libvirt_uri, demo["pool"], str(old))
    gw.volume_create(libvirt_uri, demo["pool"], f"{demo['db']}.qcow2", 1 << 30)
    out = seed()
    wanted = settings.IMAGE_DIR / "demo"
    assert f"Demo pool {demo['pool']} is at {old} (defined by an earlier clone), not at {wanted}: reusing it" in out
    assert pool_path(libvirt_uri, demo["pool"]) == old
    assert {disk_of(libvirt_uri, vm).parent for vm in (demo["web"], demo["db"], demo["build"])} == {old}
    assert gw.domain_state(libvirt_uri, demo["web"]) == "running"
    event = AuditEvent.objects.filter(action="core.demo.seed").first()
    assert event.params["pool_path"] == str(old) and "reusing it" in event.params["notices"][0]


def test_a_demo_pool_left_where_qemu_cannot_reach_is_defined_again_here_deleting_nothing(libvirt_uri, demo):
    wanted = settings.IMAGE_DIR / "demo"
    with tempfile.TemporaryDirectory(prefix="clone-") as home:  # a 0700 home: QEMU cannot enter
        old = Path(home) / "p" / "var" / "pools" / "demo"
        gw.pool_ensure_dir(libvirt_uri, demo["pool"], str(old))
        old_disk = gw.volume_create(libvirt_uri, demo["pool"], f"{demo['db']}.qcow2", 1 << 30)
        network = seed_demo.VMS[1][2]
        gw.network_ensure_isolated(libvirt_uri, network, seed_demo.NETWORKS[network])
        gw.domain_define(
            libvirt_uri, domain_xml(name=demo["db"], memory_mib=64, vcpus=1, disk_paths=[old_disk.path], networks=[])
        )
        db_uuid = gw.domain_get(libvirt_uri, demo["db"]).uuid
        out = seed()
        assert os.path.exists(old_disk.path)  # nothing deleted
    assert (
        f"Demo pool {demo['pool']} was at {old} (QEMU (libvirt-qemu) cannot reach it: {home} has mode 0700): "
        f"defined again at {wanted}; nothing was deleted." in out
    )
    assert f"{demo['db']} had its disk at {old_disk.path}, outside the demo pool: defined again on a disk in" in out
    assert pool_path(libvirt_uri, demo["pool"]) == wanted
    assert gw.domain_get(libvirt_uri, demo["db"]).uuid == db_uuid
    assert {disk_of(libvirt_uri, vm).parent for vm in (demo["web"], demo["db"], demo["build"])} == {wanted}
    assert gw.domain_state(libvirt_uri, demo["web"]) == "running"  # QEMU reaches the new place


def test_a_demo_pool_whose_directory_is_gone_is_defined_again_here(libvirt_uri, demo, tmp_path):
    old = tmp_path / "gone"
    gw.pool_ensure_dir(libvirt_uri, demo["pool"], str(old))
    os.rmdir(old)  # the earlier clone was deleted
    out = seed()
    assert f"Demo pool {demo['pool']} was at {old} (its directory is gone): defined again at" in out
    assert pool_path(libvirt_uri, demo["pool"]) == settings.IMAGE_DIR / "demo"


def test_a_demo_vm_still_running_on_a_disk_outside_the_demo_pool_is_left_alone_and_said(libvirt_uri, demo):
    old = settings.IMAGE_DIR / "deleted-clone"
    gw.pool_ensure_dir(libvirt_uri, demo["pool"], str(old))
    disk = gw.volume_create(libvirt_uri, demo["pool"], f"{demo['web']}.qcow2", 1 << 30)
    gw.domain_define(
        libvirt_uri, domain_xml(name=demo["web"], memory_mib=64, vcpus=1, disk_paths=[disk.path], networks=[])
    )
    gw.domain_start(libvirt_uri, demo["web"])
    os.unlink(disk.path)  # the earlier clone was deleted under the running VM
    os.rmdir(old)
    out = seed()
    assert f"Demo pool {demo['pool']} was at {old} (its directory is gone): defined again at" in out
    assert (
        f"{demo['web']} is running on {disk.path}, outside the demo pool {settings.IMAGE_DIR / 'demo'}: "
        "left as it is; shut it down and run seed_demo again to move it." in out
    )
    assert gw.domain_state(libvirt_uri, demo["web"]) == "running"
    assert disk_of(libvirt_uri, demo["web"]) == Path(disk.path)
