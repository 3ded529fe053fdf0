"""The state collector against the real libvirtd: changes made with `virsh`, outside the
portal, reach the database within seconds through lifecycle events; a libvirtd restart is
survived; an unreachable host is marked stale."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pytest

from apps.audit.models import AuditEvent
from apps.core.gateways import libvirt as gw
from apps.core.gateways.libvirt import domain_xml
from apps.core.models import Host
from apps.vms.models import VirtualMachine
from tests.conftest import ROOT, unique

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]

EVENTS_ONLY = "3600"  # bulk reads so rare that only events can explain a change within the test


def virsh(*args: str) -> None:
    subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], check=True, capture_output=True, timeout=60)


def wait_for(what: str, predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def start_collector(host: Host, interval: str = EVENTS_ONLY) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hypervisor_web.settings.test", "PORTAL_USE_TEST_DB": "1"}
    log = ROOT / "var" / f"test-{unique('collector')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "collector", "--skip-checks", "--host", host.name, "--interval", interval],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    proc.log = log
    wait_for("the collector's first read", lambda: Host.objects.get(pk=host.pk).collected_at, timeout=30)
    return proc


@pytest.fixture
def collector(host):
    proc = start_collector(host)
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the collector did not stop on SIGTERM")


def define_outside(name: str, disk: str, network: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as fh:
        fh.write(domain_xml(name=name, memory_mib=64, vcpus=1, disk_paths=[disk], networks=[network]))
        fh.flush()
        virsh("define", fh.name)


def restart_libvirtd() -> None:
    """Stop the system libvirtd and start it again; return once it answers. (It disturbs
    every other test using libvirtd at the time: only the few tests that must, call it.)"""
    subprocess.run(["pkill", "-TERM", "-x", "libvirtd"], check=True, timeout=10)
    wait_for("libvirtd stopped",
             lambda: subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, timeout=5).returncode != 0,
             timeout=30)  # fmt: skip
    subprocess.run(["libvirtd", "-d"], check=True, timeout=30)
    wait_for("libvirtd answering", lambda: subprocess.run(["virsh", "-c", "qemu:///system", "version"],
             capture_output=True, timeout=10).returncode == 0, timeout=30)  # fmt: skip


def row(host: Host, name: str) -> VirtualMachine | None:
    return VirtualMachine.objects.filter(host=host, name=name, present=True).first()


def test_changes_made_with_virsh_reach_the_database_within_seconds(host, collector, libvirt_uri, test_pool,
                                                                     test_network):  # fmt: skip
    name = unique("tvm")
    vol = gw.volume_create(libvirt_uri, test_pool, f"{name}.qcow2", 1 << 30)
    try:
        define_outside(name, vol.path, test_network)
        vm = wait_for("the defined VM's row", lambda: row(host, name))
        assert vm.last_state == "shut off" and vm.memory_kib == 64 * 1024 and vm.disk_capacity == 1 << 30
        assert AuditEvent.objects.filter(action="vms.vm.found", target_name=name, actor_name="system").exists()

        virsh("start", name)
        wait_for("running", lambda: row(host, name).last_state == "running")
        virsh("suspend", name)
        wait_for("paused", lambda: row(host, name).last_state == "paused")
        virsh("resume", name)
        wait_for("running again", lambda: row(host, name).last_state == "running")
        virsh("destroy", name)
        wait_for("shut off", lambda: row(host, name).last_state == "shut off")

        virsh("undefine", name)
        wait_for("the row marked gone", lambda: not row(host, name))
        assert VirtualMachine.objects.get(host=host, uuid=vm.uuid).present is False
        assert AuditEvent.objects.filter(action="vms.vm.gone", target_name=name, actor_name="system").exists()
    finally:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True, timeout=30)
        subprocess.run(["virsh", "-c", "qemu:///system", "undefine", name], capture_output=True, timeout=30)


def test_the_collector_recovers_after_libvirtd_restarts(host, collector, make_domain):
    name = make_domain(running=True)
    wait_for("the VM's row", lambda: row(host, name) and row(host, name).last_state == "running")

    restart_libvirtd()

    # the watch was lost with the daemon: a change now arrives only if it was re-opened
    time.sleep(1)
    deadline = time.monotonic() + 30
    virsh("suspend", name)
    wait_for("the suspension seen through a new watch", lambda: row(host, name).last_state == "paused",
             timeout=max(deadline - time.monotonic(), 1))  # fmt: skip
    assert collector.poll() is None, collector.log.read_text()[-2000:]


def test_an_unreachable_host_is_marked_stale_with_since_when(db, transactional_db):
    host = Host.objects.create(name=unique("gone"), uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "collector", "--skip-checks", "--host", host.name, "--interval", "1"],
        cwd=ROOT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "hypervisor_web.settings.test",
                       "PORTAL_USE_TEST_DB": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        marked = wait_for("the host marked unreachable",
                          lambda: Host.objects.filter(pk=host.pk, unreachable_since__isnull=False).first(),
                          timeout=30)  # fmt: skip
        assert marked.stale and "nonexistent" in marked.collect_error
        time.sleep(2.5)  # more failed reads: the time it went away is kept, and audited once
        assert Host.objects.get(pk=host.pk).unreachable_since == marked.unreachable_since
        assert AuditEvent.objects.filter(action="vms.host.unreachable", target_name=host.name).count() == 1
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=15)
