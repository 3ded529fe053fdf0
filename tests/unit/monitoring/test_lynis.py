"""The lynis scan: its report parsed, and the faults: a scan that hangs ends as a failed job
saying so, test ids that are not lynis' are refused before anything runs.

The scan itself runs the real lynis in tests/integration/monitoring/test_lynis_real.py (the
job, lynis' report file, the page and the metrics). Here a stand-in `lynis` (an executable
first on HOST_CHECK_PATH) is used only for what the real one cannot be made to do on demand:
hang past LYNIS_TIMEOUT."""

import stat
from pathlib import Path

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


@pytest.mark.django_db
def test_a_stored_scan_is_shown_and_exported(client, host, admin, settings):
    """The page and the metrics read the newest LynisScan row (the real scan writes it in
    tests/integration/monitoring/test_lynis_real.py); here a row from the report above."""
    from django.utils import timezone

    report = posture.parse_lynis_report(REPORT)
    LynisScan.objects.create(host=host, finished_at=timezone.now(), lynis_version=report.version,
                             hardening_index=report.hardening_index, warnings=report.warnings,
                             suggestions=report.suggestions, tests_performed=report.tests_performed)  # fmt: skip
    client.force_login(admin)
    page = client.get(reverse("monitoring:security")).content.decode()
    assert 'data-testid="lynis-index">14<' in page and "Reboot of system is most likely needed" in page
    assert "<code>DEB-0880</code> Install fail2ban" in page
    settings.METRICS_TOKEN = TOKEN
    metrics.libvirt_stats.clear()
    found = samples(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content)
    assert value(found, "portal_lynis_hardening_index", host=host.name) == 14
    assert value(found, "portal_lynis_warnings", host=host.name) == 1


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
def test_a_hanging_scan_fails_the_job_with_the_reason(client, host, admin, settings, stand_in_lynis):
    settings.LYNIS_TIMEOUT = 0.5
    stand_in_lynis("exec sleep 30\n")
    job = run_scan(client, admin)
    assert job.state == "failed" and "timed out" in job.error
    assert not LynisScan.objects.exists()


@pytest.mark.django_db
def test_test_ids_that_are_not_lynis_ones_fail_the_job_before_lynis_runs(client, host, admin, settings, stand_in_lynis):
    settings.LYNIS_TESTS = ["KRNL-6000", "--upload"]
    stand_in_lynis(f"touch {settings.HOST_CHECK_PATH.split(':')[0]}/ran\n")
    job = run_scan(client, admin)
    assert job.state == "failed" and "Not lynis test ids: '--upload'" in job.error
    assert not LynisScan.objects.exists()
    assert not (Path(settings.HOST_CHECK_PATH.split(":")[0]) / "ran").exists()  # lynis never started
