"""The real lynis (Debian's, installed by scripts/setup-system.sh) through the portal's lynis
job: the Security page's button, the job, the gateway's argv, lynis' own report file parsed,
its findings on the page and in the metrics.

A whole `lynis audit system` takes minutes here (203 s, 252 tests), so the scan is limited to
one test with LYNIS_TESTS (`--tests KRNL-6000`: the kernel's sysctls against lynis' scan
profile), which still costs lynis' whole start-up (14-46 s on this machine). It runs once per
suite (marker slow_host_tool: the PostgreSQL run; the SQLite run after it deselects it). The
stand-in lynis of tests/unit/monitoring/test_lynis.py is kept only for the faults a real
lynis cannot be made to show on demand (a scan that hangs past LYNIS_TIMEOUT)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from apps.monitoring import metrics
from apps.monitoring.models import LynisScan
from tests.unit.monitoring.test_lynis import run_scan
from tests.unit.monitoring.test_metrics import TOKEN, samples, value

pytestmark = [
    pytest.mark.slow_host_tool,
    pytest.mark.skipif(shutil.which("lynis", path="/usr/sbin:/usr/bin:/sbin:/bin") is None,
                       reason="lynis is not installed (scripts/setup-system.sh installs it)"),
]  # fmt: skip



def _profile_sysctls() -> dict[str, str]:
    """The sysctls lynis' default scan profile wants (`config-data=sysctl;KEY;VALUE;...` lines
    of /etc/lynis/default.prf): a machine where one differs gets KRNL-6000's suggestion."""
    wanted = {}
    for line in Path("/etc/lynis/default.prf").read_text().splitlines():
        if line.startswith("config-data=sysctl;"):
            _, key, preferred, *_ = line.split(";")
            wanted[key] = preferred
    return wanted


def _sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


@pytest.mark.django_db
def test_a_real_lynis_scan_runs_as_a_job_and_its_findings_are_shown(client, host, admin, settings):
    settings.LYNIS_TESTS = ["KRNL-6000"]
    settings.LYNIS_TIMEOUT = 240
    job = run_scan(client, admin)
    assert job.state == "succeeded", job.error

    scan = LynisScan.objects.get(host=host)
    package = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "lynis"], capture_output=True, text=True).stdout
    version = scan.lynis_version  # what lynis wrote into its report file: the installed package's
    assert version and package.split("-")[0] == version, (package, version)
    assert scan.tests_performed == 1  # only the test asked for ran: --tests reached lynis
    assert scan.hardening_index is not None and 0 <= scan.hardening_index <= 100
    assert job.result == {
        "scan": scan.pk,
        "hardening_index": scan.hardening_index,
        "warnings": len(scan.warnings),
        "suggestions": len(scan.suggestions),
    }
    differing = {k: v for k, v in _profile_sysctls().items() if _sysctl(k) not in (None, v)}
    tests = {s["test"] for s in scan.suggestions}
    if differing:  # this machine's kernel is not hardened the way lynis' profile wants
        assert "KRNL-6000" in tests, (differing, scan.suggestions)
    assert tests <= {"KRNL-6000", "LYNIS"}, tests  # no finding from a test that was not asked for

    page = client.get("/security/").content.decode()
    assert f'data-testid="lynis-index">{scan.hardening_index}<' in page
    assert f"lynis {version}, 1 tests" in page
    for suggestion in scan.suggestions:
        assert f"<code>{suggestion['test']}</code> {suggestion['text']}" in page

    settings.METRICS_TOKEN = TOKEN
    metrics.libvirt_stats.clear()
    found = samples(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content)
    assert value(found, "portal_lynis_hardening_index", host=host.name) == scan.hardening_index
    assert value(found, "portal_lynis_warnings", host=host.name) == len(scan.warnings)
