"""Installing the guide's auditd watch rules: the diff is shown first, the install (a job)
writes exactly what was shown, a stale or unconfirmed request changes nothing, audited."""

import stat

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.monitoring import services
from tests.conftest import reauthenticate


@pytest.fixture
def rules(tmp_path, settings):
    settings.AUDIT_RULES_FILE = tmp_path / "rules.d" / "hypervisor-portal.rules"
    settings.POSTURE_AUDIT_WATCH_PATHS = ["/etc/libvirt", "/etc/hypervisor-portal"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # only this directory: the real augenrules is hidden, a test puts a stand-in when it needs one
    settings.HOST_CHECK_PATH = str(bin_dir)
    return settings.AUDIT_RULES_FILE, bin_dir


def install(client, **data):
    return client.post(reverse("monitoring:audit_rules_install"), data, HTTP_HX_REQUEST="true")


@pytest.mark.django_db
def test_the_diff_is_shown_then_exactly_those_rules_are_installed(client, host, admin, rules):
    path, _ = rules
    client.force_login(admin)
    page = client.get(reverse("monitoring:audit_rules")).content.decode()
    assert "Not installed." in page and "+-w /etc/hypervisor-portal -p wa -k hypervisor-portal" in page
    reauthenticate(client)
    response = install(client, sha256=services.audit_rules_diff().wanted_sha256, confirm="yes")
    assert response.status_code == 200
    job = jobs.Job.objects.get(kind=services.AUDIT_RULES_JOB)
    jobs.job_run(job.pk)
    job.refresh_from_db()
    assert job.state == "succeeded", job.error
    assert path.read_text() == services.audit_rules_wanted()
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert "augenrules is not installed" in job.result["loaded"] and job.result["changed"] is True
    assert "Installed and up to date." in client.get(reverse("monitoring:audit_rules")).content.decode()


@pytest.mark.django_db
def test_an_unconfirmed_or_stale_install_changes_nothing_and_is_audited(client, host, admin, rules, settings):
    path, _ = rules
    client.force_login(admin)
    reauthenticate(client)
    seen = services.audit_rules_diff().wanted_sha256
    response = install(client, sha256=seen)
    assert response.status_code == 400 and "Confirm that you read the diff" in response.content.decode()
    settings.POSTURE_AUDIT_WATCH_PATHS = ["/etc/libvirt"]  # the wanted rules change after the diff was seen
    assert install(client, sha256=seen, confirm="yes").status_code == 409
    assert not path.exists() and not jobs.Job.objects.exists()
    errors = list(AuditEvent.objects.filter(action=services.AUDIT_RULES_JOB, outcome="failed").order_by("id")
                  .values_list("error", flat=True))  # fmt: skip
    assert len(errors) == 2 and "Confirm" in errors[0] and "changed since the diff" in errors[1]


@pytest.mark.django_db
def test_the_rules_are_loaded_with_augenrules_when_it_exists(client, host, admin, rules):
    """A stand-in augenrules, though Debian's (auditd) is installed here: the real one reads
    only /etc/audit/rules.d (not the test's AUDIT_RULES_FILE; it has no option for another
    directory), rewrites /etc/audit/audit.rules and, with --load, runs `auditctl -R`, which
    replaces the kernel's audit rules for the whole shared machine. So this checks only that
    the job runs `augenrules --load` after writing the file and reports its failure."""
    path, bin_dir = rules
    augenrules = bin_dir / "augenrules"
    augenrules.write_text(f'#!/bin/sh\n[ "$1" = "--load" ] || exit 2\n[ -f "{path}" ] || exit 3\necho "No change"\n')
    augenrules.chmod(augenrules.stat().st_mode | stat.S_IXUSR)
    job = services.audit_rules_install_request(actor=admin, seen_sha256=services.audit_rules_diff().wanted_sha256)
    jobs.job_run(job.pk)
    job.refresh_from_db()
    assert job.state == "succeeded" and job.result["loaded"] == "loaded with augenrules --load"
    refused = "echo 'Error sending add rule data request (Operation not permitted)' >&2; exit 1\n"
    augenrules.write_text("#!/bin/sh\n" + refused)
    job = services.audit_rules_install_request(actor=admin, seen_sha256=services.audit_rules_diff().wanted_sha256)
    jobs.job_run(job.pk)
    job.refresh_from_db()
    assert job.state == "failed" and "augenrules --load failed" in job.error and "Operation not permitted" in job.error
