"""The lynis scan: its report parsed, run as a job whose findings the Security page and the
metrics show, and a scan that hangs ends as a failed job saying so.

A real `lynis audit system` takes minutes (24 s for a single test here), too long for the
suite: the job runs a stand-in `lynis` (an executable first on HOST_CHECK_PATH that writes
a report in lynis' format where lynis is told to), through the real gateway and job."""

import stat

import pytest
from django.urls import reverse

from apps.core import jobs
from apps.monitoring import metrics, posture, services
from apps.monitoring.models import LynisScan
from tests.conftest import reauthenticate
from tests.unit.monitoring.test_metrics import TOKEN, samples, value

# the shape of a report written by lynis 3.0.8 on this machine (lines taken from it)
REPORT = """# Lynis Report
report_version_major=1
lynis_version=3.0.8
os=Linux
warning[]=KRNL-5830|Reboot of system is most likely needed|-|text:reboot|
suggestion[]=DEB-0880|Install fail2ban to automatically ban hosts that commit multiple authentication errors.|-|-|
suggestion[]=KRNL-5788|Determine why /vmlinuz is missing on this Debian/Ubuntu system.|/vmlinuz or /boot/vmlinuz|-|
lynis_tests_done=17
hardening_index=14
"""


def test_the_report_is_parsed():
    report = posture.parse_lynis_report(REPORT)
    assert (report.version, report.hardening_index, report.tests_performed) == ("3.0.8", 14, 17)
    (warning,) = report.warnings
    assert warning == {
        "test": "KRNL-5830", "text": "Reboot of system is most likely needed", "details": "", "solution": "text:reboot",
    }  # fmt: skip
    assert [s["test"] for s in report.suggestions] == ["DEB-0880", "KRNL-5788"]
    assert report.suggestions[1]["details"] == "/vmlinuz or /boot/vmlinuz"


@pytest.fixture
def stand_in_lynis(tmp_path, settings):
    settings.HOST_CHECK_PATH = f"{tmp_path}:{settings.HOST_CHECK_PATH}"
    (tmp_path / "report.dat").write_text(REPORT)

    def install(body: str) -> None:
        path = tmp_path / "lynis"
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    # writes the report where --report-file says, as lynis does
    install(
        'while [ $# -gt 0 ]; do if [ "$1" = "--report-file" ]; then cp '
        f'{tmp_path}/report.dat "$2"; fi; shift; done\n'
    )
    return install


def run_scan(client, admin):
    client.force_login(admin)
    reauthenticate(client)
    assert client.post(reverse("monitoring:lynis_run"), HTTP_HX_REQUEST="true").status_code == 200
    job = jobs.Job.objects.get(kind=services.LYNIS_JOB)
    jobs.job_run(job.pk)
    job.refresh_from_db()
    return job


@pytest.mark.django_db
def test_a_scan_runs_as_a_job_and_its_findings_are_shown(client, host, admin, settings, stand_in_lynis):
    job = run_scan(client, admin)
    assert job.state == "succeeded", job.error
    assert job.result["hardening_index"] == 14 and job.result["warnings"] == 1
    scan = LynisScan.objects.get(host=host)
    assert scan.suggestions[0]["test"] == "DEB-0880"
    page = client.get(reverse("monitoring:security")).content.decode()
    assert 'data-testid="lynis-index">14<' in page and "Reboot of system is most likely needed" in page
    settings.METRICS_TOKEN = TOKEN
    metrics.libvirt_stats.clear()
    found = samples(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content)
    assert value(found, "portal_lynis_hardening_index", host=host.name) == 14
    assert value(found, "portal_lynis_warnings", host=host.name) == 1


@pytest.mark.django_db
def test_a_hanging_scan_fails_the_job_with_the_reason(client, host, admin, settings, stand_in_lynis):
    settings.LYNIS_TIMEOUT = 0.5
    stand_in_lynis("exec sleep 30\n")
    job = run_scan(client, admin)
    assert job.state == "failed" and "timed out" in job.error
    assert not LynisScan.objects.exists()
