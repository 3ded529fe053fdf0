"""Fixtures of the storage tests: a shut-off VM synced into the portal, data written into
a qcow2 volume with qemu-io (so its allocation really grows), and a local webhook.

The hard limit caps a VM's provisioned size, so a VM crosses its quota only when its
disks and their snapshots take more than the disks' size: `overfill` writes data, keeps
it in an internal snapshot and writes over it again."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from apps.core import runner
from apps.core.gateways import libvirt as gw
from apps.vms.collector import host_collect
from apps.vms.models import VirtualMachine

MIB = 1 << 20


@pytest.fixture
def off_vm(host, make_domain):
    """A shut-off VM (its disk can be written with qemu-io), synced into the portal."""
    name = make_domain(running=False)
    host_collect(host)  # the state collector's read: what the pages show
    return VirtualMachine.objects.select_related("host").get(host=host, name=name)


@pytest.fixture
def small_vm(host, make_domain):
    """A shut-off VM with one 256 MiB disk (a quota of 0.25 GiB fits it exactly)."""
    name = make_domain(running=False, disk_gib=0.25)
    host_collect(host)  # the state collector's read: what the pages show
    return VirtualMachine.objects.select_related("host").get(host=host, name=name)


def overfill(vm, mib: int = 160) -> int:
    """Make the VM's disk take about 2 x `mib` MiB, more than a small disk's size: write
    `mib` MiB, keep them in an internal snapshot, write over them. Returns the allocation."""
    path = disk_path(vm)
    write_data(path, mib)
    gw.snapshot_create(vm.host.uri, vm.name, "overfill")
    write_data(path, mib)
    return gw.domain_disks_live(vm.host.uri, vm.name).allocation


def disk_path(vm) -> str:
    return gw.domain_disks_live(vm.host.uri, vm.name).disks[0].path


def write_data(path: str, mib: int, offset_mib: int = 0) -> None:
    """Write `mib` MiB of non-zero data into a qcow2 image (the VM must be off)."""
    runner.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {offset_mib}M {mib}M", path], timeout=120)


@pytest.fixture
def webhook(settings, monkeypatch):
    """An HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it. Notifications
    are delivered here, in this process, by the workers' own code (notifications.deliver)."""
    from apps.monitoring import notifications

    monkeypatch.setattr(notifications, "_enqueue", lambda channel, payload: notifications.deliver(
        channel, payload, attempts=1, pause=0))  # fmt: skip
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.NOTIFY_WEBHOOK_URL = f"http://127.0.0.1:{server.server_port}/hook"
    yield received
    server.shutdown()
    server.server_close()


def events(action: str, **filters):
    from apps.audit.models import AuditEvent

    return list(AuditEvent.objects.filter(action=action, **filters).order_by("id"))
