"""The host security checklist: read live on this machine (what it cannot answer is
unknown with the reason, never a pass), a hanging command is cut short, results are
stored, and a pass that turns to fail raises an alert."""

import stat
import time
from pathlib import Path

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.core.gateways import host_checks
from apps.monitoring import posture, services
from apps.monitoring.models import MonitoringAlert, PostureResult, Status
from tests.conftest import reauthenticate


def by_key(findings):
    return {f.key: f for f in findings}


# ------------------------------------------------------------------ sshd and auditd
# The SSH and auditd checks run the real Debian `sshd -T` and `auditctl` (openssh-server and
# auditd, installed by scripts/setup-system.sh with their services never started). Stand-in
# executables (a directory put first on HOST_CHECK_PATH) remain only for what the real
# programs cannot be made to do on demand: hang, and list watch rules of a running auditd
# (no auditd runs here, and a test must not start one); each such test says so.


@pytest.fixture
def bin_dir(tmp_path, settings):
    stand_ins = tmp_path / "stand-ins"
    stand_ins.mkdir()
    settings.HOST_CHECK_PATH = f"{stand_ins}:{settings.HOST_CHECK_PATH}"

    def command(name: str, script: str) -> None:
        path = stand_ins / name
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    return command


def _check(key):
    return next(c for c in posture.CHECKS if c.key == key)


def test_a_hanging_command_is_unknown_timed_out_and_stalls_nothing(bin_dir, settings):
    """A stand-in sshd that sleeps: the real one cannot be made to hang."""
    settings.POSTURE_COMMAND_TIMEOUT = 0.5
    bin_dir("sshd", "exec sleep 30\n")
    started = time.monotonic()
    found = by_key(posture.evaluate([_check("ssh.key_only"), _check("sysctl.kernel.dmesg_restrict")]))
    assert time.monotonic() - started < 5
    assert found["ssh.key_only"].status == Status.UNKNOWN
    assert found["ssh.key_only"].evidence.startswith("timed out")
    assert found["sysctl.kernel.dmesg_restrict"].status != Status.UNKNOWN  # the next check still ran


@pytest.fixture
def sshd_config(tmp_path, settings):
    """Writes an sshd config file for the real `sshd -T -f FILE -h KEY`, with a host key made
    here by ssh-keygen (the project's setup installs openssh-server: its absence fails, with the fix,
    as promtool's does). sshd -T also wants its privilege separation directory /run/sshd, which
    scripts/setup-system.sh makes (ssh.service would, but never runs here); made here too if
    missing, and left (an empty directory another run may be using)."""
    import subprocess

    if host_checks.which("sshd") is None or host_checks.which("ssh-keygen") is None:
        pytest.fail("openssh-server is not installed (the project installs it): run scripts/setup-system.sh")
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=10)
    if not Path("/run/sshd").is_dir():
        if not host_checks.is_root():
            pytest.fail("/run/sshd is missing and only root may make it: run scripts/setup-system.sh (it makes it)")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    settings.POSTURE_SSHD_HOST_KEY = str(key)

    def write(text: str) -> Path:
        path = tmp_path / "sshd_config"
        path.write_text(text)
        settings.POSTURE_SSHD_CONFIG = str(path)
        return path

    return write


def test_sshd_with_passwords_fails_and_key_only_passes(sshd_config):
    sshd_config("PasswordAuthentication yes\nPermitRootLogin yes\n")
    (f,) = posture.evaluate([_check("ssh.key_only")])
    assert f.status == Status.FAIL, f.evidence
    assert "passwordauthentication yes" in f.evidence and "permitrootlogin yes" in f.evidence
    assert "kbdinteractiveauthentication yes" in f.evidence  # sshd's own default, as sshd -T tells
    sshd_config("PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n")
    (f,) = posture.evaluate([_check("ssh.key_only")])
    assert f.status == Status.PASS, f.evidence
    assert "permitrootlogin without-password" in f.evidence  # sshd -T's spelling of prohibit-password


def test_an_sshd_config_sshd_rejects_is_unknown_with_sshds_reason(sshd_config):
    path = sshd_config("PasswordAuthentication no\nNoSuchOption yes\n")
    (f,) = posture.evaluate([_check("ssh.key_only")])
    assert f.status == Status.UNKNOWN
    assert f.evidence.startswith("sshd -T failed:") and str(path) in f.evidence and "NoSuchOption" in f.evidence


def _real_auditctl():
    path = host_checks.which("auditctl")
    if path is None:
        pytest.fail("auditd is not installed (the project installs it): run scripts/setup-system.sh")
    return path


def test_the_auditd_check_tells_what_this_machines_audit_subsystem_says():
    """The real `auditctl -s` on this machine, read again here: a refusal (no audit netlink
    in this container, EPERM) is unknown with auditctl's reason; auditing disabled or no
    auditd is a fail (here: the kernel answers, enabled 0 and pid 0, as no auditd runs)."""
    import re
    import subprocess

    seen = subprocess.run([_real_auditctl(), "-s"], capture_output=True, text=True, timeout=10)
    (f,) = posture.evaluate([_check("auditd.rules")])
    if seen.returncode != 0:
        reason = (seen.stderr or seen.stdout).strip().splitlines()[-1]
        assert f.status == Status.UNKNOWN and reason in f.evidence, f.evidence
    elif re.search(r"^enabled\s+0", seen.stdout, re.M):
        assert (f.status, f.evidence) == (Status.FAIL, "kernel auditing is disabled (auditctl -s: enabled 0)")
    elif re.search(r"^pid\s+0$", seen.stdout, re.M):
        assert (f.status, f.evidence) == (Status.FAIL, "auditd is not running (auditctl -s: pid 0)")
    else:
        assert f.status in (Status.PASS, Status.FAIL) and f.evidence.startswith("auditd runs"), f.evidence


def test_auditctl_without_the_audit_capabilities_is_unknown_with_its_reason(bin_dir):
    """The real auditctl, run by `setpriv` without CAP_AUDIT_CONTROL/READ/WRITE, as in a
    container that gets no audit capabilities: its own refusal is the evidence."""
    auditctl = _real_auditctl()
    setpriv = host_checks.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv is missing: util-linux, an essential Debian package, is not installed")
    bin_dir("auditctl", f'exec {setpriv} --bounding-set=-audit_control,-audit_read,-audit_write {auditctl} "$@"\n')
    (f,) = posture.evaluate([_check("auditd.rules")])
    assert f.status == Status.UNKNOWN, f.evidence
    assert f.evidence.startswith("auditctl -s failed (") and "cannot be read here" in f.evidence


def test_a_running_auditd_needs_its_watch_rules(bin_dir, settings):
    """A stand-in auditctl that reports a running auditd and its rules: no auditd runs on this
    machine and a test must not start one (it would audit the whole shared host)."""
    settings.POSTURE_AUDIT_WATCH_PATHS = ["/etc/libvirt", "/etc/hypervisor-portal"]
    status = 'if [ "$1" = "-s" ]; then echo "enabled 1"; echo "pid 4242"; exit 0; fi\n'
    bin_dir("auditctl", status + "echo '-w /etc/libvirt -p wa -k libvirt'\n")
    (f,) = posture.evaluate([_check("auditd.rules")])
    assert f.status == Status.FAIL and "/etc/hypervisor-portal" in f.evidence
    bin_dir("auditctl", status + "echo '-w /etc/libvirt -p wa -k libvirt'; echo '-w /etc/hypervisor-portal -p wa'\n")
    (f,) = posture.evaluate([_check("auditd.rules")])
    assert f.status == Status.PASS
    refused = "echo 'Error sending rule list data request (Operation not permitted)' >&2; exit 255\n"
    bin_dir("auditctl", status + refused)
    (f,) = posture.evaluate([_check("auditd.rules")])
    assert f.status == Status.UNKNOWN and "Operation not permitted" in f.evidence  # not "nothing watched"


# ------------------------------------------------------------------ stored results and alerts


def finding(key, status, evidence="seen"):
    return posture.Finding(key, key.title(), "kernel", status, evidence, "fix it")


@pytest.mark.django_db
def test_a_pass_that_turns_to_fail_raises_an_alert_and_a_pass_clears_it(host):
    services.posture_store(host, [finding("a", Status.PASS), finding("b", Status.UNKNOWN)])
    assert not MonitoringAlert.objects.exists()
    report = services.posture_store(host, [finding("a", Status.FAIL, "now 0"), finding("b", Status.FAIL)])
    assert report.raised == ["a"]  # b was unknown, never a pass: no alert, its change audited
    alert = MonitoringAlert.objects.get()
    assert (alert.subject, alert.state) == ("a", "open") and "now 0" in alert.message
    row = PostureResult.objects.get(host=host, key="a")
    assert (row.status, row.previous_status) == (Status.FAIL, Status.PASS)
    services.posture_store(host, [finding("a", Status.FAIL), finding("b", Status.FAIL)])
    assert MonitoringAlert.objects.count() == 1  # still failing: one alert, not one per run
    services.posture_store(host, [finding("a", Status.PASS), finding("b", Status.FAIL)])
    alert.refresh_from_db()
    assert alert.state == "cleared"
    actions = list(AuditEvent.objects.order_by("id").values_list("action", "params__check"))
    assert actions == [
        ("monitoring.posture.change", "a"), ("monitoring.alert.raise", "a"), ("monitoring.posture.change", "b"),
        ("monitoring.posture.change", "a"), ("monitoring.alert.clear", "a"),
    ]  # fmt: skip


@pytest.mark.django_db
def test_checks_about_the_portal_read_its_database_and_cache(host, settings, vm_rows):
    from django.core.cache import cache

    from apps.monitoring.metrics import LAST_SCRAPE_KEY

    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOW_LOOPBACK = False
    found = by_key(posture.evaluate([_check("vms.resource_limits"), _check("monitoring.enabled")]))
    assert found["vms.resource_limits"].status == Status.UNKNOWN and "idle" in found["vms.resource_limits"].evidence
    assert found["monitoring.enabled"].status == Status.FAIL
    settings.METRICS_TOKEN = "t"
    cache.set(LAST_SCRAPE_KEY, time.time() - 30)
    assert posture.evaluate([_check("monitoring.enabled")])[0].status == Status.PASS


@pytest.mark.django_db
def test_zones_firewall_review_and_backups_are_checked_from_their_apps_rows(host, settings, vm_rows):
    from datetime import timedelta

    from django.utils import timezone

    from apps.backups.models import BackupRepository, BackupRun, BackupVerification
    from apps.network.models import FirewallApply, Zone
    from apps.vms.models import VirtualMachine, VmInterface

    keys = ("network.zones", "network.firewall_reviewed", "backups.verified")

    def statuses():
        found = by_key(posture.evaluate([_check(k) for k in keys]))
        return {k: found[k].status for k in keys}, found

    got, found = statuses()
    assert got == dict.fromkeys(keys, Status.FAIL)  # no zone, no confirmed apply, no backup
    assert "busy" in found["backups.verified"].evidence and "idle" in found["backups.verified"].evidence
    zone = Zone.objects.create(host=host, name="dmz", network_name="pz-dmz", bridge="pzdmz0")
    busy, idle = VirtualMachine.objects.get(name="busy"), VirtualMachine.objects.get(name="idle")
    now = timezone.now()
    VmInterface.objects.create(vm=busy, mac="52:54:00:00:00:01", network=zone.network_name, collected_at=now)
    VmInterface.objects.create(vm=idle, mac="52:54:00:00:00:02", network="default", collected_at=now)
    got, found = statuses()
    assert got["network.zones"] == Status.FAIL and "idle" in found["network.zones"].evidence
    VmInterface.objects.filter(vm=idle).update(network=zone.network_name)
    too_old = now - timedelta(days=settings.POSTURE_FIREWALL_REVIEW_DAYS + 1)
    FirewallApply.objects.create(host=host, document={}, fingerprint="f", state="confirmed", actor_name="ann",
                                 finished_at=too_old)  # fmt: skip
    got, found = statuses()
    assert got["network.zones"] == Status.PASS
    assert got["network.firewall_reviewed"] == Status.FAIL and "days old" in found["network.firewall_reviewed"].evidence
    FirewallApply.objects.update(finished_at=now)
    repo = BackupRepository.objects.create(path="/var/backups/hypervisor-portal/p", key_id="p" * 16)
    for vm, ok in ((busy, True), (idle, False)):
        run = BackupRun.objects.create(vm=vm, vm_name=vm.name, vm_uuid=str(vm.uuid), repository=repo,
                                       state="succeeded", snapshot_id="s" * 8, finished_at=now)  # fmt: skip
        BackupVerification.objects.create(run=run, ok=ok)
    got, found = statuses()
    assert got["network.firewall_reviewed"] == Status.PASS
    assert got["backups.verified"] == Status.FAIL and found["backups.verified"].evidence.endswith("idle")
    BackupVerification.objects.create(run=BackupRun.objects.get(vm=idle), ok=True)  # verified again, passed
    assert statuses()[0]["backups.verified"] == Status.PASS


@pytest.fixture
def vm_rows(host):
    import uuid

    from apps.vms.models import VirtualMachine

    VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="busy", vcpus=2, memory_kib=65536)
    VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="idle", vcpus=0, memory_kib=0)


# ------------------------------------------------------------------ the Security page


@pytest.mark.django_db
def test_the_security_page_shows_results_and_only_admins_may_run_the_checks(client, host, admin, operator):
    services.posture_store(host, [finding("sysctl.kernel.kptr_restrict", Status.FAIL, "kernel.kptr_restrict = 0")])
    client.force_login(operator)
    page = client.get(reverse("monitoring:security")).content.decode()
    assert 'data-check="sysctl.kernel.kptr_restrict" data-status="fail"' in page
    assert "kernel.kptr_restrict = 0" in page and "fix it" in page
    assert 'data-testid="posture-run"' not in page
    assert client.post(reverse("monitoring:security_run")).status_code == 403
    client.force_login(admin)
    assert 'data-testid="posture-run"' in client.get(reverse("monitoring:security")).content.decode()


@pytest.mark.django_db
def test_check_now_runs_the_checklist_on_this_machine_as_a_job(client, host, admin, settings):
    """One live run of the whole checklist (apt-get -s takes seconds): the job stores a
    result per check, each with evidence; this machine's answers are what /proc and /sys say."""
    settings.POSTURE_COMMAND_TIMEOUT = 20
    client.force_login(admin)
    reauthenticate(client)
    response = client.post(reverse("monitoring:security_run"), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    job = jobs.Job.objects.get(kind=services.POSTURE_JOB)
    jobs.job_run(job.pk)
    job.refresh_from_db()
    assert job.state == "succeeded", job.error
    assert AuditEvent.objects.filter(action=services.POSTURE_JOB, outcome="success", actor_name=admin.username).exists()
    live = {r.key: r for r in PostureResult.objects.filter(host=host)}
    assert set(live) == {c.key for c in posture.CHECKS}
    for r in live.values():
        assert r.status in Status.values
        assert r.evidence.strip() and r.fix.strip(), f"{r.key} gives no evidence or no fix"
    for name, (wanted, _) in posture.SYSCTLS.items():  # what /proc/sys says, read here too
        path = Path("/proc/sys") / name.replace(".", "/")
        r = live[f"sysctl.{name}"]
        if not path.exists():
            assert r.status == Status.UNKNOWN
            continue
        actual = path.read_text().strip()
        assert r.status == (Status.PASS if actual in wanted else Status.FAIL), r.evidence
        assert f"{name} = {actual}" in r.evidence
    # what this machine lacks is unknown with the reason, never a pass
    if host_checks.which("sshd") is None:
        assert live["ssh.key_only"].status == Status.UNKNOWN
        assert "sshd is not installed" in live["ssh.key_only"].evidence
    if not Path("/sys/kernel/security/lsm").exists() and not Path("/sys/module/apparmor").exists():
        assert live["lsm.active"].status == Status.UNKNOWN and "no LSM" in live["lsm.active"].evidence
        assert live["lsm.qemu_confined"].status == Status.UNKNOWN
    if host_checks.which("auditctl") is None:
        assert live["auditd.rules"].status == Status.UNKNOWN
    # the update checks answer what dpkg and apt say here, asked again by the test itself
    import subprocess

    state = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "unattended-upgrades"], capture_output=True, text=True)
    schedule = live["updates.schedule"]
    if "install ok installed" not in state.stdout:
        assert (schedule.status, schedule.evidence) == (Status.FAIL, "unattended-upgrades is not installed")
    else:
        assert schedule.status in (Status.PASS, Status.FAIL) and "unattended-upgrades is installed" in schedule.evidence
    sim = subprocess.run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    security = [ln.split()[1] for ln in sim.stdout.splitlines() if ln.startswith("Inst ") and "ecurity" in ln]
    pending = live["updates.security_pending"]
    if sim.returncode != 0:
        assert pending.status == Status.UNKNOWN
    elif security:
        assert pending.status == Status.FAIL and pending.evidence.startswith(f"{len(security)} security updates")
        assert security[0] in pending.evidence
    else:
        assert pending.status == Status.PASS
