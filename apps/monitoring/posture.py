"""The host security checklist, evaluated live on the machine the portal (its worker) runs on.

Each check answers pass, fail or unknown, with the evidence it read and how to fix it. A
check that cannot decide here (no sshd, no LSM, a command that timed out, the backup app
that does not exist yet) says unknown and why: never a pass it did not see. Every read of
the machine goes through apps.core.gateways.host_checks; one check failing in an unexpected
way becomes unknown and never stops the others.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from apps.core.errors import GatewayError, GatewayTimeout
from apps.core.gateways import host_checks as hc

from .models import Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    key: str
    title: str
    category: str
    status: str
    evidence: str
    fix: str


MACHINE = "machine"  # reads the machine the worker runs on (sysctl, sshd, auditd, LSM, apt)
PORTAL = "portal"  # reads the portal's own records: the same whichever host


@dataclass(frozen=True)
class Check:
    key: str
    title: str
    category: str
    fix: str
    run: Callable[[], tuple[str, str]]  # -> (status, evidence), on the worker's machine / portal-wide
    scope: str = MACHINE
    per_host: Callable[[object], tuple[str, str]] | None = None  # the portal's records of one host
    remote: Callable[[object], tuple[str, str]] | None = None  # read over the host's libvirt connection


def host_is_local(host) -> bool:
    """Whether `host` is the machine the worker runs on: its libvirt URI names no other
    machine (qemu:///system, or localhost / this machine's own name)."""
    import socket
    from urllib.parse import urlsplit

    name = (urlsplit(host.uri).hostname or "").lower()
    return name in {"", "localhost", "127.0.0.1", "::1", socket.gethostname().lower(), socket.getfqdn().lower()}


def _not_checked_remote(host) -> tuple[str, str]:
    import socket

    return Status.UNKNOWN, (
        f"not checked: remote host. {host.name} ({host.uri}) is another machine; this check reads only the machine "
        f"the portal's worker runs on ({socket.gethostname()}), and libvirt does not report it. Check it on "
        f"{host.name} itself (or run a portal worker there)."
    )


def _unknown_from(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, GatewayTimeout):
        return Status.UNKNOWN, f"timed out: {exc.message}"
    if isinstance(exc, GatewayError):
        return Status.UNKNOWN, exc.message
    return Status.UNKNOWN, f"the check failed unexpectedly: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ kernel hardening

# name -> (values that pass, why it matters)
SYSCTLS = {
    "kernel.kptr_restrict": ({"1", "2"}, "hides kernel addresses from unprivileged users"),
    "kernel.dmesg_restrict": ({"1"}, "only root reads the kernel log"),
    "kernel.unprivileged_bpf_disabled": ({"1", "2"}, "unprivileged users cannot load BPF programs"),
    "kernel.randomize_va_space": ({"2"}, "full address space layout randomisation"),
    "fs.protected_symlinks": ({"1"}, "no symlink attacks in world-writable directories"),
    "fs.protected_hardlinks": ({"1"}, "no hard links to files the user does not own"),
    "fs.suid_dumpable": ({"0"}, "set-uid programs never dump core"),
}


def _sysctl_check(name: str, wanted: set[str], why: str) -> Check:
    def run() -> tuple[str, str]:
        value = hc.sysctl(name)
        if value is None:
            return Status.UNKNOWN, f"this kernel has no {name}"
        status = Status.PASS if value in wanted else Status.FAIL
        return status, f"{name} = {value} (wanted {' or '.join(sorted(wanted))}: {why})"

    fix = f"echo '{name} = {max(wanted)}' >> /etc/sysctl.d/60-portal-hardening.conf && sysctl --system"
    return Check(f"sysctl.{name}", f"{name} is {' or '.join(sorted(wanted))}", "kernel", fix, run)


def _ip_forward() -> tuple[str, str]:
    value = hc.sysctl("net.ipv4.ip_forward")
    if value is None:
        return Status.UNKNOWN, "this kernel has no net.ipv4.ip_forward"
    policy = settings.POSTURE_IP_FORWARD
    if policy == "any":
        return Status.PASS, f"net.ipv4.ip_forward = {value}; the policy (POSTURE_IP_FORWARD=any) allows either"
    status = Status.PASS if value == policy else Status.FAIL
    return status, f"net.ipv4.ip_forward = {value}; the policy (POSTURE_IP_FORWARD) wants {policy}"


# ------------------------------------------------------------------ SSH


def _sshd_argv() -> list[str]:
    """`sshd -T` (the effective configuration, read-only: it starts no server), of
    POSTURE_SSHD_CONFIG (-f) and with POSTURE_SSHD_HOST_KEY (-h) when they are set."""
    argv = ["sshd", "-T"]
    if settings.POSTURE_SSHD_CONFIG:
        argv += ["-f", str(settings.POSTURE_SSHD_CONFIG)]
    if settings.POSTURE_SSHD_HOST_KEY:
        argv += ["-h", str(settings.POSTURE_SSHD_HOST_KEY)]
    return argv


def _sshd_key_only() -> tuple[str, str]:
    out = hc.run(_sshd_argv())
    if out.returncode != 0:
        # e.g. "Missing privilege separation directory: /run/sshd" (no SSH server ever started
        # here), "no hostkeys available", a syntax error in the config file
        lines = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        return Status.UNKNOWN, f"sshd -T failed: {'; '.join(lines[-3:]) if lines else f'exit status {out.returncode}'}"
    conf = {}
    for line in out.stdout.splitlines():
        key, _, value = line.strip().partition(" ")
        conf[key.lower()] = value.strip().lower()
    bad = []
    if conf.get("passwordauthentication") != "no":
        bad.append(f"passwordauthentication {conf.get('passwordauthentication', '(unset)')}")
    kbd = conf.get("kbdinteractiveauthentication", conf.get("challengeresponseauthentication", "yes"))
    if kbd != "no":
        bad.append(f"kbdinteractiveauthentication {kbd}")
    if conf.get("permitrootlogin") not in ("no", "prohibit-password", "without-password", "forced-commands-only"):
        bad.append(f"permitrootlogin {conf.get('permitrootlogin', '(unset)')}")
    if conf.get("permitemptypasswords") == "yes":
        bad.append("permitemptypasswords yes")
    if bad:
        return Status.FAIL, "sshd -T: " + ", ".join(bad)
    return Status.PASS, (
        "sshd -T: passwordauthentication no, kbdinteractiveauthentication no, "
        f"permitrootlogin {conf.get('permitrootlogin')}"
    )


# ------------------------------------------------------------------ auditd


def _audit_paths() -> list[str]:
    return [p for p in settings.POSTURE_AUDIT_WATCH_PATHS if p]


def _auditd_rules() -> tuple[str, str]:
    status_out = hc.run(["auditctl", "-s"])
    if status_out.returncode != 0:
        lines = [ln for ln in (status_out.stderr or status_out.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {status_out.returncode}"
        return Status.UNKNOWN, f"auditctl -s failed ({reason}): the kernel audit system cannot be read here"
    enabled = re.search(r"^enabled\s+(\d)", status_out.stdout, re.M)
    pid = re.search(r"^pid\s+(\d+)", status_out.stdout, re.M)
    if not enabled or enabled.group(1) == "0":
        return Status.FAIL, "kernel auditing is disabled (auditctl -s: enabled 0)"
    if not pid or pid.group(1) == "0":
        return Status.FAIL, "auditd is not running (auditctl -s: pid 0)"
    rules = hc.run(["auditctl", "-l"])
    if rules.returncode != 0:  # e.g. EPERM: the kernel refuses audit netlink to this process
        lines = [ln for ln in (rules.stderr or rules.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {rules.returncode}"
        return Status.UNKNOWN, f"auditctl -l failed ({reason}): the audit rules cannot be read here"
    watched = set()
    for line in rules.stdout.splitlines():
        m = re.search(r"-w\s+(\S+)", line) or re.search(r"dir=(\S+)", line) or re.search(r"path=(\S+)", line)
        if m:
            watched.add(m.group(1).rstrip("/"))
    missing = [p for p in _audit_paths() if p.rstrip("/") not in watched]
    if missing:
        return Status.FAIL, f"auditd runs (pid {pid.group(1)}) but nothing watches {', '.join(missing)}"
    return Status.PASS, f"auditd runs (pid {pid.group(1)}) and watches {', '.join(_audit_paths())}"


# ------------------------------------------------------------------ LSM


def _active_lsms() -> list[str] | None:
    lsm = hc.read_text(hc.SYS / "kernel" / "security" / "lsm")
    if lsm is None:
        return None
    return [x for x in lsm.split(",") if x]


def _lsm_active() -> tuple[str, str]:
    lsms = _active_lsms()
    apparmor = hc.read_text(hc.SYS / "module" / "apparmor" / "parameters" / "enabled")
    selinux = hc.read_text(hc.SYS / "fs" / "selinux" / "enforce")
    if lsms is None and apparmor is None and selinux is None:
        return Status.UNKNOWN, (
            "this kernel exposes no LSM (no /sys/kernel/security/lsm, no AppArmor or SELinux): "
            "it cannot confine QEMU here"
        )
    if apparmor == "Y" and (lsms is None or "apparmor" in lsms):
        return Status.PASS, f"AppArmor is enabled (active LSMs: {','.join(lsms or ['?'])})"
    if selinux == "1":
        return Status.PASS, "SELinux is enforcing"
    if selinux == "0":
        return Status.FAIL, "SELinux is permissive (/sys/fs/selinux/enforce = 0)"
    return Status.FAIL, f"neither AppArmor nor SELinux is active (active LSMs: {','.join(lsms or []) or 'none'})"


def _qemu_confined() -> tuple[str, str]:
    lsm_status, lsm_evidence = _lsm_active()
    if lsm_status != Status.PASS:
        return Status.UNKNOWN, f"no LSM to confine QEMU with: {lsm_evidence}"
    procs = hc.processes_named("qemu-system")
    if not procs:
        return Status.UNKNOWN, "no QEMU process runs now: nothing to inspect"
    unconfined = []
    for pid, comm in procs:
        label = hc.process_security_label(pid)
        if label is None or label.startswith("unconfined") or ":unconfined_t" in label:
            unconfined.append(f"{comm}[{pid}] {label or 'no label'}")
    if unconfined:
        return (
            Status.FAIL,
            f"{len(unconfined)} of {len(procs)} QEMU processes run unconfined: {'; '.join(unconfined[:5])}",
        )
    return Status.PASS, f"all {len(procs)} QEMU processes run under a libvirt security label"


def _remote_security_driver(host) -> tuple[str, str]:
    """Over libvirt: the security drivers the host's libvirt confines QEMU with."""
    from apps.core.gateways import libvirt as gw

    models = gw.host_security_models(host.uri)
    confining = [m for m in models if m and m not in ("none", "dac")]
    shown = ", ".join(models) or "none"
    if confining:
        return Status.PASS, f"libvirt on {host.name} confines QEMU with {', '.join(confining)} (capabilities: {shown})"
    return Status.FAIL, f"libvirt on {host.name} confines QEMU with no LSM (capabilities secmodel: {shown})"


# ------------------------------------------------------------------ the portal's own state


def _vm_limits(host=None) -> tuple[str, str]:
    from apps.vms.models import VirtualMachine

    vms = VirtualMachine.objects.filter(present=True, **({"host": host} if host is not None else {}))
    total = vms.count()
    if total == 0:
        return Status.UNKNOWN, "the portal knows no VM yet"
    unmeasured = list(vms.filter(vcpus=0).values_list("name", flat=True)[:5]) + list(
        vms.filter(memory_kib=0).values_list("name", flat=True)[:5]
    )
    if unmeasured:
        return (
            Status.UNKNOWN,
            f"the collector has not read the vCPU or memory cap of: {', '.join(sorted(set(unmeasured)))}",
        )
    # every VM has a storage quota: its own or the portal-wide default (which always applies)
    return Status.PASS, f"all {total} VMs have a vCPU and memory cap and a storage quota (own or default)"


def _monitoring_enabled() -> tuple[str, str]:
    from .metrics import LAST_SCRAPE_KEY

    configured = bool(settings.METRICS_TOKEN) or settings.METRICS_ALLOW_LOOPBACK
    if not configured:
        return Status.FAIL, "/metrics is closed: neither METRICS_TOKEN nor METRICS_ALLOW_LOOPBACK is set"
    last = cache.get(LAST_SCRAPE_KEY)
    if last is None:
        return Status.FAIL, "/metrics is configured but nothing has scraped it"
    age = time.time() - float(last)
    if age > settings.POSTURE_SCRAPE_MAX_AGE:
        return Status.FAIL, f"/metrics was last scraped {age / 60:.0f} minutes ago"
    return Status.PASS, f"/metrics was scraped {age:.0f} seconds ago"


def _incident_plan() -> tuple[str, str]:
    from django.utils import timezone

    from .models import IncidentResponsePlan

    plan = IncidentResponsePlan.objects.filter(id=1).first()
    if plan is None:
        return Status.FAIL, "no incident response plan is recorded"
    if plan.reviewed_at is None:
        return Status.FAIL, f"the plan (version {plan.version}, by {plan.updated_by_name}) was never reviewed"
    age = (timezone.now() - plan.reviewed_at).days
    if age > settings.POSTURE_PLAN_REVIEW_DAYS:
        return Status.FAIL, f"the plan was last reviewed {age} days ago by {plan.reviewed_by_name}"
    return Status.PASS, f"version {plan.version}, reviewed {age} days ago by {plan.reviewed_by_name}"


def _training() -> tuple[str, str]:
    from django.contrib.auth import get_user_model

    from apps.accounts.models import Role, RoleAssignment

    from .models import TrainingAcknowledgement
    from .training import ITEMS

    admin_ids = set(RoleAssignment.objects.filter(role=Role.ADMIN).values_list("user_id", flat=True))
    admins = list(get_user_model().objects.filter(pk__in=admin_ids, is_active=True).order_by("username"))
    if not admins:
        return Status.UNKNOWN, "no active administrator"
    done: dict[int, set[str]] = {}
    for user_id, item in TrainingAcknowledgement.objects.filter(user__in=admins).values_list("user_id", "item"):
        done.setdefault(user_id, set()).add(item)
    missing = [f"{u.username} ({len(set(ITEMS) - done.get(u.pk, set()))} left)" for u in admins
               if not set(ITEMS) <= done.get(u.pk, set())]  # fmt: skip
    if missing:
        return Status.FAIL, f"training not fully acknowledged by: {', '.join(missing[:10])}"
    return Status.PASS, f"all {len(admins)} administrators acknowledged the {len(ITEMS)} training items"


def _backups(host=None) -> tuple[str, str]:
    """Every VM has a good backup (restic: always encrypted) whose latest verification
    passed within the age its backup policies allow (BACKUP_VERIFY_MAX_AGE_DAYS for a VM no
    policy covers)."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.backups.models import BackupVerification
    from apps.backups.selectors import verify_max_age_days
    from apps.vms.models import VirtualMachine

    vms = list(VirtualMachine.objects.filter(present=True, **({"host": host} if host is not None else {}))
               .only("pk", "name", "zone"))  # fmt: skip
    if not vms:
        return Status.UNKNOWN, "no VM is known yet: nothing to back up"
    allowed = verify_max_age_days(vms)
    now = timezone.now()
    since = now - timedelta(days=max(allowed.values()))
    latest: dict[int, tuple] = {}
    rows = (BackupVerification.objects.filter(run__vm__in=vms, checked_at__gte=since)
            .order_by("-checked_at", "-pk").values_list("run__vm_id", "ok", "checked_at"))  # fmt: skip
    for vm_id, ok, checked in rows:
        latest.setdefault(vm_id, (ok, checked))
    missing = sorted(vm.name for vm in vms
                     if not (vm.pk in latest and latest[vm.pk][0]
                             and latest[vm.pk][1] >= now - timedelta(days=allowed[vm.pk])))  # fmt: skip
    ages = sorted(set(allowed.values()))
    within = f"{ages[0]} days" if len(ages) == 1 else f"{ages[0]}-{ages[-1]} days (per policy)"
    if missing:
        return Status.FAIL, (f"{len(missing)} of {len(vms)} VMs have no backup verified within "
                             f"{within}: {', '.join(missing[:10])}")  # fmt: skip
    return Status.PASS, f"all {len(vms)} VMs have an encrypted backup verified within {within}"


def _zones(host=None) -> tuple[str, str]:
    """Zones exist and every VM's interfaces sit in one (the state collector's rows)."""
    from apps.network.models import Zone
    from apps.vms.models import VmInterface

    networks = set(Zone.objects.values_list("network_name", flat=True))
    if not networks:
        return Status.FAIL, "no network security zone is configured"
    interfaces = VmInterface.objects.filter(vm__present=True, **({"vm__host": host} if host is not None else {}))
    outside = sorted(set(interfaces.exclude(network__in=networks)
                         .values_list("vm__name", flat=True)))  # fmt: skip
    if outside:
        return Status.FAIL, f"{len(outside)} VM(s) have interfaces outside every zone: {', '.join(outside[:10])}"
    return Status.PASS, f"{len(networks)} zone(s); every VM interface the collector read is in one"


def _firewall_reviewed() -> tuple[str, str]:
    """A confirmed apply (someone saw the diff and confirmed it) within POSTURE_FIREWALL_REVIEW_DAYS."""
    from django.conf import settings
    from django.utils import timezone

    from apps.network.models import FirewallApply

    last = (FirewallApply.objects.filter(state=FirewallApply.State.CONFIRMED).order_by("-finished_at")
            .values_list("finished_at", "actor_name").first())  # fmt: skip
    if last is None or last[0] is None:
        return Status.FAIL, "no firewall ruleset was ever applied and confirmed"
    days = (timezone.now() - last[0]).days
    if days > settings.POSTURE_FIREWALL_REVIEW_DAYS:
        return Status.FAIL, f"the last confirmed apply is {days} days old (by {last[1]})"
    return Status.PASS, f"the ruleset was last reviewed and confirmed {days} day(s) ago by {last[1]}"


# ------------------------------------------------------------------ updates


def _update_schedule() -> tuple[str, str]:
    out = hc.run(["dpkg-query", "-W", "-f=${Status}", "unattended-upgrades"])
    installed = out.returncode == 0 and "install ok installed" in out.stdout
    if not installed:
        return Status.FAIL, "unattended-upgrades is not installed"
    periodic = hc.read_text("/etc/apt/apt.conf.d/20auto-upgrades") or ""
    if re.search(r'APT::Periodic::Unattended-Upgrade\s+"1"', periodic):
        return Status.PASS, "unattended-upgrades is installed and enabled (20auto-upgrades)"
    return Status.FAIL, "unattended-upgrades is installed but not enabled in /etc/apt/apt.conf.d/20auto-upgrades"


def _pending_security_updates() -> tuple[str, str]:
    out = hc.run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade"])
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        return Status.UNKNOWN, f"apt-get -s upgrade failed: {lines[-1] if lines else out.returncode}"
    pending = [ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("Inst ") and "ecurity" in ln]
    if pending:
        shown = ", ".join(pending[:10]) + (" ..." if len(pending) > 10 else "")
        return Status.FAIL, f"{len(pending)} security updates pending (from the last apt-get update): {shown}"
    return Status.PASS, "no security update pending (as of the last apt-get update)"


CHECKS: list[Check] = [
    *(_sysctl_check(name, wanted, why) for name, (wanted, why) in SYSCTLS.items()),
    Check(
        "sysctl.net.ipv4.ip_forward",
        "IPv4 forwarding follows the policy",
        "kernel",
        "set net.ipv4.ip_forward in /etc/sysctl.d/ to the value POSTURE_IP_FORWARD names (0 unless VMs are routed)",
        _ip_forward,
    ),
    Check(
        "ssh.key_only",
        "SSH accepts keys only",
        "access",
        "in /etc/ssh/sshd_config: PasswordAuthentication no, KbdInteractiveAuthentication no, "
        "PermitRootLogin prohibit-password; then reload sshd",
        _sshd_key_only,
    ),
    Check(
        "auditd.rules",
        "auditd runs with the watch rules",
        "detection",
        "apt-get install auditd; then Security > auditd rules installs the watch rules of "
        "POSTURE_AUDIT_WATCH_PATHS (after showing the diff)",
        _auditd_rules,
    ),
    Check(
        "lsm.active",
        "AppArmor or SELinux is active",
        "isolation",
        "boot with AppArmor (apt-get install apparmor; security=apparmor on the kernel command line)",
        _lsm_active,
        remote=_remote_security_driver,
    ),
    Check(
        "lsm.qemu_confined",
        "QEMU runs confined by libvirt's security driver",
        "isolation",
        "set security_driver in /etc/libvirt/qemu.conf (apparmor or selinux), restart libvirtd, restart the VMs",
        _qemu_confined,
        remote=_remote_security_driver,
    ),
    Check(
        "vms.resource_limits",
        "Every VM has resource limits",
        "isolation",
        "let the state collector read every host (Dashboard); give VMs a storage quota (Storage)",
        _vm_limits,
        scope=PORTAL,
        per_host=_vm_limits,
    ),
    Check(
        "monitoring.enabled",
        "Monitoring scrapes the portal",
        "detection",
        "set METRICS_TOKEN (METRICS_TOKEN_FILE) and point Prometheus at /metrics (deploy/prometheus/)",
        _monitoring_enabled,
        scope=PORTAL,
    ),
    Check(
        "incident.plan", "An incident response plan is recorded and reviewed", "response",
        "write the plan on Security > Incident response plan and record its review (yearly)",
        _incident_plan,
        scope=PORTAL,
    ),
    Check(
        "training.admins", "Administrators acknowledged the training items", "response",
        "each administrator acknowledges the items on Security > Training", _training, scope=PORTAL,
    ),
    Check(
        "network.zones", "Network zones are configured", "isolation",
        "create zones on the Network page and move every VM into one", _zones, scope=PORTAL, per_host=_zones,
    ),
    Check(
        "network.firewall_reviewed", "Firewall rules were reviewed recently", "isolation",
        "review the diff on Network > Firewall, apply and confirm it", _firewall_reviewed, scope=PORTAL,
    ),
    Check(
        "backups.verified",
        "Backups are encrypted and verified",
        "recovery",
        "add a backup policy (Backups page or `vm_backup policy-add`); beat verifies the latest backups",
        _backups,
        scope=PORTAL,
        per_host=_backups,
    ),
    Check(
        "updates.schedule",
        "Updates are installed on a schedule",
        "updates",
        "apt-get install unattended-upgrades && dpkg-reconfigure -plow unattended-upgrades",
        _update_schedule,
    ),
    Check(
        "updates.security_pending",
        "No security update is pending",
        "updates",
        "apt-get update && apt-get upgrade (or let unattended-upgrades do it)",
        _pending_security_updates,
    ),
]


def _run_for(check: Check, host) -> tuple[str, str]:
    if host is None:
        return check.run()
    if check.per_host is not None:
        return check.per_host(host)
    if check.scope == PORTAL or host_is_local(host):
        return check.run()
    if check.remote is not None:
        return check.remote(host)
    return _not_checked_remote(host)


def evaluate(checks: list[Check] | None = None, host=None) -> list[Finding]:
    """Run every check (for `host`: a remote host's machine checks say "not checked: remote
    host" unless libvirt reports them); each gets its own outcome, whatever the others do."""
    findings = []
    for check in checks if checks is not None else CHECKS:
        try:
            status, evidence = _run_for(check, host)
        except Exception as exc:  # one broken check must not hide the others
            if not isinstance(exc, GatewayError):
                log.exception("posture check %s failed", check.key)
            status, evidence = _unknown_from(exc)
        findings.append(Finding(check.key, check.title, check.category, status, evidence, check.fix))
    return findings


# ------------------------------------------------------------------ lynis


@dataclass(frozen=True)
class LynisReport:
    version: str
    hardening_index: int | None
    tests_performed: int
    warnings: list[dict]
    suggestions: list[dict]


def parse_lynis_report(text: str) -> LynisReport:
    """lynis' report file (key=value lines; `warning[]=` and `suggestion[]=` hold
    TEST-ID|text|details|solution)."""
    values: dict[str, str] = {}
    found: dict[str, list[dict]] = {"warning[]": [], "suggestion[]": []}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key.startswith("#"):
            continue
        if key in found:
            parts = [*value.split("|"), "", "", "", ""][:4]
            test, what, details, solution = (p.strip() for p in parts)
            found[key].append(
                {
                    "test": test,
                    "text": what,
                    "details": "" if details == "-" else details,
                    "solution": "" if solution == "-" else solution,
                }
            )
        else:
            values[key] = value.strip()
    index = values.get("hardening_index", "")
    performed = values.get("lynis_tests_done", "")
    return LynisReport(
        version=values.get("lynis_version", ""),
        hardening_index=int(index) if index.isdigit() else None,
        tests_performed=int(performed) if performed.isdigit() else 0,
        warnings=found["warning[]"],
        suggestions=found["suggestion[]"],
    )
