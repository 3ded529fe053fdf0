"""The scrape over a real running guest on the real libvirtd: its counters come from the
one bulk statistics call, and promtool accepts the result."""

import shutil
import subprocess

import pytest

from apps.monitoring import metrics
from tests.unit.monitoring.test_metrics import TOKEN, samples, value


@pytest.mark.django_db
def test_a_running_guest_has_cpu_disk_and_network_counters(client, settings, vm):
    settings.METRICS_TOKEN = TOKEN
    metrics.libvirt_stats.clear()
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    found = samples(response.content)
    labels = {"host": vm.host.name, "vm": vm.name}
    assert value(found, "portal_vm_cpu_seconds_total", **labels) > 0
    assert value(found, "portal_vm_memory_current_bytes", **labels) == 64 << 20
    disk = [k for k in found if k[0] == "portal_vm_disk_read_bytes_total" and ("vm", vm.name) in k[1]]
    nic = [k for k in found if k[0] == "portal_vm_network_receive_bytes_total" and ("vm", vm.name) in k[1]]
    assert [dict(k[1])["device"] for k in disk] == ["vda"]
    assert len(nic) == 1 and dict(nic[0][1])["device"].startswith("vnet")
    assert value(found, "portal_vm_state", state="running", zone=vm.zone, **labels) == 1
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: `make setup` installs it (Debian prometheus)"
    result = subprocess.run([promtool, "check", "metrics"], input=response.content, capture_output=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (result.stdout + result.stderr)
