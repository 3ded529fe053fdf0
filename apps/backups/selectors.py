"""Reads for the backup pages and commands (no writes, no services)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps.accounts.permissions import restrict
from apps.core.errors import NotFound
from apps.core.models import Job
from apps.vms.models import VirtualMachine

from .models import BackupPolicy, BackupRepository, BackupRun, BackupVerification

GOOD = Q(state=BackupRun.State.SUCCEEDED, forgotten_at__isnull=True) & ~Q(snapshot_id="")


def runs_visible_to(user):
    return restrict(BackupRun.objects.select_related("vm", "host", "repository", "job"), user, "backups.view")


def run_for(user, pk: int) -> BackupRun:
    run = runs_visible_to(user).filter(pk=pk).first()
    if run is None:
        raise NotFound("No such backup that you can see.")
    return run


def last_good(vm: VirtualMachine) -> BackupRun | None:
    return BackupRun.objects.filter(GOOD, vm=vm).order_by("-finished_at", "-pk").first()


def interrupted(run: BackupRun) -> bool:
    """A run still marked active whose job already ended: shown as failed until reconciled."""
    return run.state in BackupRun.ACTIVE and run.job is not None and run.job.state in Job.FINISHED


def verify_max_age_days(vms) -> dict[int, int]:
    """How old (days) each VM's last successful verification may be: the strictest
    `verify_max_age_days` of the enabled policies that cover it, BACKUP_VERIFY_MAX_AGE_DAYS
    for a VM no policy covers. One query (the policies) whatever the number of VMs."""
    policies = list(BackupPolicy.objects.filter(enabled=True))
    out = {}
    for vm in vms:
        allowed = [p.verify_max_age_days for p in policies if p.covers(vm)]
        out[vm.pk] = min(allowed) if allowed else settings.BACKUP_VERIFY_MAX_AGE_DAYS
    return out


@dataclass
class VmBackupStatus:
    vm: VirtualMachine
    last_good: BackupRun | None
    last_verified: BackupVerification | None
    active: BackupRun | None
    verify_max_age_days: int = 0  # what its policies allow (0: BACKUP_VERIFY_MAX_AGE_DAYS)

    @property
    def verification_overdue(self) -> bool:
        if self.last_verified is None:
            return True
        age = timezone.now() - self.last_verified.checked_at
        return age > timedelta(days=self.verify_max_age_days or settings.BACKUP_VERIFY_MAX_AGE_DAYS)


def vm_statuses(user) -> list[VmBackupStatus]:
    """Each visible VM with its last good backup, last successful verification, the run in
    progress and the verification age its policies allow: a fixed number of queries
    whatever the number of VMs."""
    vms = list(restrict(VirtualMachine.objects.filter(present=True).select_related("host"), user, "backups.view"))
    ids = [vm.pk for vm in vms]
    good: dict[int, BackupRun] = {}
    for run in BackupRun.objects.filter(GOOD, vm_id__in=ids).order_by("finished_at", "pk"):
        good[run.vm_id] = run  # the latest wins
    verified: dict[int, BackupVerification] = {}
    for v in BackupVerification.objects.filter(ok=True, run__vm_id__in=ids).select_related("run").order_by(
        "checked_at", "pk"
    ):
        verified[v.run.vm_id] = v
    active: dict[int, BackupRun] = {}
    for run in BackupRun.objects.filter(state__in=BackupRun.ACTIVE, vm_id__in=ids).select_related("job"):
        if not interrupted(run):
            active[run.vm_id] = run
    allowed = verify_max_age_days(vms)
    return [VmBackupStatus(vm, good.get(vm.pk), verified.get(vm.pk), active.get(vm.pk), allowed[vm.pk]) for vm in vms]


def recent_runs(user, limit: int = 50) -> list[BackupRun]:
    return list(runs_visible_to(user)[:limit])


def repositories() -> list[BackupRepository]:
    return list(BackupRepository.objects.order_by("path"))


def policies() -> list[BackupPolicy]:
    return list(BackupPolicy.objects.all())


def vm_status(vm: VirtualMachine) -> VmBackupStatus:
    """One VM's backup status (the VM page's panel)."""
    verified = BackupVerification.objects.filter(ok=True, run__vm=vm).order_by("-checked_at", "-pk").first()
    active = None
    for run in BackupRun.objects.filter(state__in=BackupRun.ACTIVE, vm=vm).select_related("job"):
        if not interrupted(run):
            active = run
    return VmBackupStatus(vm, last_good(vm), verified, active, verify_max_age_days([vm])[vm.pk])
