"""Restore a backup to a new VM, verify a backup by restoring it into scratch space, and
apply retention. Each is a job; every request, refusal and outcome is audited."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.services import audited
from apps.core import jobs
from apps.core.errors import Conflict, GatewayError, InvalidInput, NotFound
from apps.core.gateways import libvirt as gw
from apps.core.gateways import restic
from apps.core.models import Job
from apps.core.validators import validate_name
from apps.vms.history import revision_capture
from apps.vms.models import VirtualMachine
from apps.vms.services import inventory_sync

from ..models import BackupPolicy, BackupRepository, BackupRun, BackupVerification
from . import common

RESTORE = "backups.vm.restore"
RESTORE_IN_PLACE = "backups.vm.restore_in_place"
VERIFY = "backups.run.verify"
PRUNE = "backups.repository.prune"


def _require_good(run: BackupRun) -> None:
    if not run.good:
        raise Conflict(f"Backup {run.pk} of {run.vm_name} is not a good backup ({run.state}); choose another.")


# ---------------------------------------------------------------- restore to a new VM


def backup_restore(*, actor, run: BackupRun, new_name: str, pool: str) -> Job:
    """Ask for a restore of `run` as a new VM `new_name` with its disks in `pool`."""
    params = {"run": run.pk, "new_name": new_name, "pool": pool}
    with audited(actor=actor, action=f"{RESTORE}.request", target=run.vm or run.host, perm="backups.run",
                 params=params, atomic=True):  # fmt: skip
        _require_good(run)
        validate_name(new_name, "VM name")
        validate_name(pool, "pool name")
        if run.host is None:
            raise Conflict("The host of this backup is gone.")
        if any(d.get("luks2") for d in run.disks):
            if not run.keys_snapshot_id:
                raise Conflict("This backup has host-opened LUKS2 disks but no key material saved with it (taken "
                               "before the portal backed up headers and keys): the new VM could not open them. "
                               "Restore it in place, or choose a newer backup.")  # fmt: skip
            authorize(actor, "encryption.change", run.vm or run.host, action=RESTORE)
        _require_free_name(run.host.uri, new_name)
        gw.pool_path(run.host.uri, pool)  # NotFound for an unknown pool
        return jobs.job_enqueue(actor=actor, kind=RESTORE, target=run.vm or run.host, host=run.host, params=params)


def _require_free_name(uri: str, name: str) -> None:
    try:
        gw.domain_state(uri, name)
    except NotFound:
        return
    raise Conflict(f"A VM named {name!r} exists; choose a new name.")


@jobs.handler(RESTORE)
def _run_restore(job: Job, progress: jobs.Progress) -> dict:
    run = BackupRun.objects.select_related("vm", "host", "repository", "keys_repository").get(pk=job.params["run"])
    authorize(jobs.job_actor(job), "backups.run", run.vm or run.host, action=job.kind)
    new_name, uri = job.params["new_name"], run.host.uri
    try:
        gw.domain_state(uri, new_name)
        progress(95, f"{new_name} already exists")  # delivered again after it finished
        return {"vm": new_name}
    except NotFound:
        pass
    _require_good(run)
    pool_dir = Path(gw.pool_path(uri, job.params["pool"]))
    scratch = common.private_dir(pool_dir / f".portal-restore-{job.pk}")
    keys_scratch = Path(settings.BACKUP_STAGING_DIR) / f"restore-keys-{job.pk}"
    plan = None
    try:
        progress(10, f"restoring snapshot {run.snapshot_id} of {run.vm_name}")
        restored = _restore_and_check(run, scratch, progress)
        if any(d.get("luks2") for d in run.disks):
            progress(82, "restoring the LUKS headers and disk keys")
            plan = _key_material_plan(run, keys_scratch, restored)  # keys open the restored disks, or stop here
        paths = {}
        for disk in run.disks:
            suffix = Path(disk["path"]).suffix or ".img"
            final = pool_dir / f"{new_name}-{disk['target']}{suffix}"
            if final.exists():
                raise Conflict(f"{final} exists; the restore does not overwrite files.")
            os.rename(restored[disk["target"]], final)
            os.chmod(final, 0o600)
            paths[disk["target"]] = str(final)
        sources = dict(paths)
        if plan is not None:
            for item in plan.disks:  # the container moved: the new VM names its unlocked mapping
                item["path"] = paths[item["target"]]
            sources.update(plan.sources)
        xml = gw.domain_restored_xml(run.domain_xml, name=new_name, disk_paths=sources)
        progress(90, f"defining {new_name}")
        gw.domain_define(uri, xml)
        gw.pool_refresh(uri, job.params["pool"])
    finally:
        common.remove_tree(scratch)
        _discard_key_material(keys_scratch)
    inventory_sync(run.host)
    if plan is not None:
        from apps.encryption.services import backup_material

        new_vm = VirtualMachine.objects.get(host=run.host, name=new_name, present=True)
        backup_material.key_material_adopt(actor=jobs.job_actor(job), vm=new_vm, plan=plan, pool=job.params["pool"])
    restored_vm = VirtualMachine.objects.filter(host=run.host, name=new_name, present=True).first()
    if restored_vm is not None:  # configuration history: its first revision, by whoever restored it
        revision_capture(vm=restored_vm, actor=jobs.job_actor(job), reason=job.kind)
    return {"vm": new_name, "disks": paths}


def _key_material_plan(run: BackupRun, scratch: Path, restored: dict[str, str], *, for_restore: bool = True):
    """Restore the run's key-material snapshot (its own repository) into `scratch` and let
    the encryption app check that each saved key opens its restored container."""
    from apps.encryption.services import backup_material

    if not run.keys_snapshot_id or run.keys_repository is None:
        raise Conflict(f"Backup {run.pk} has no saved LUKS headers and keys.")
    _discard_key_material(scratch)
    common.private_dir(scratch)
    handle = common.open_repository(run.keys_repository)
    common.with_stale_locks_removed(handle, lambda: restic.restore(
        handle, run.keys_snapshot_id, str(scratch), timeout=settings.BACKUP_COMMAND_TIMEOUT))  # fmt: skip
    manifests = list(scratch.rglob(backup_material.MANIFEST))
    if len(manifests) != 1:
        raise GatewayError(f"The key-material snapshot of backup {run.pk} holds no manifest; it is damaged.")
    return backup_material.key_material_plan(manifests[0].parent, restored, for_restore=for_restore)


def _discard_key_material(scratch: Path) -> None:
    from apps.encryption.services import backup_material

    backup_material.key_material_discard(scratch)


def _restore_and_check(run: BackupRun, scratch: Path, progress: jobs.Progress) -> dict[str, str]:
    """Restore the run's snapshot under `scratch` and compare every disk's checksum with
    the one recorded at backup time. Returns {target: restored path}."""
    handle = common.open_repository(run.repository)
    common.with_stale_locks_removed(handle, lambda: restic.restore(
        handle, run.snapshot_id, str(scratch), timeout=settings.BACKUP_COMMAND_TIMEOUT))  # fmt: skip
    out = {}
    for index, disk in enumerate(run.disks):
        restored = scratch / disk["path"].lstrip("/")
        if not restored.is_file():
            raise GatewayError(f"The backup has no copy of disk {disk['target']} ({disk['path']}).")
        digest, size = common.sha256_file(str(restored))
        if digest != disk["sha256"] or size != disk["size"]:
            raise GatewayError(f"The restored disk {disk['target']} does not match its checksum recorded at backup "
                               "time; the backup is damaged.")  # fmt: skip
        progress(40 + 40 * (index + 1) // len(run.disks), f"disk {disk['target']}: checksum matches")
        out[disk["target"]] = str(restored)
    return out


# ---------------------------------------------------------------- restore in place


def backup_restore_in_place(*, actor, run: BackupRun, confirmed: bool = False) -> Job:
    """Ask for the VM's disks to be put back as they were in `run` (the VM shut off). The
    current disk files are kept beside them (`<disk>.pre-restore-<job>`) until removed."""
    with audited(actor=actor, action=f"{RESTORE_IN_PLACE}.request", target=run.vm or run.host, perm="backups.run",
                 params={"run": run.pk}, atomic=True):  # fmt: skip
        _require_good(run)
        if run.vm is None or not run.vm.present:
            raise Conflict(f"{run.vm_name} no longer exists; restore this backup as a new VM instead.")
        if not confirmed:
            raise InvalidInput(f"Restoring {run.vm_name} in place replaces its disks: it needs confirmation.")
        _require_shut_off(run)
        return jobs.job_enqueue(actor=actor, kind=RESTORE_IN_PLACE, target=run.vm, host=run.host,
                                params={"run": run.pk})  # fmt: skip


def restore_in_place_kept(run: BackupRun, job_id: int) -> list[str]:
    """Where restore-in-place job `job_id` keeps each disk of the VM as it was before the
    restore (renamed, not copied: no time, no space). The way back is renaming it over the
    restored file, the VM shut off; remove it when satisfied."""
    return [f"{disk['path']}.pre-restore-{job_id}" for disk in run.disks]


def _require_shut_off(run: BackupRun) -> None:
    state = gw.domain_state(run.host.uri, run.vm.name)
    if state != "shut off":
        raise Conflict(f"{run.vm.name} is {state}; shut it down before restoring it in place.")


@jobs.handler(RESTORE_IN_PLACE, lost_hint="Disks already swapped keep their previous version as *.pre-restore-<job>.")
def _run_restore_in_place(job: Job, progress: jobs.Progress) -> dict:
    import shutil

    run = BackupRun.objects.select_related("vm__host", "host", "repository").get(pk=job.params["run"])
    authorize(jobs.job_actor(job), "backups.run", run.vm, action=job.kind)
    _require_good(run)
    _require_shut_off(run)
    first_dir = Path(run.disks[0]["path"]).parent
    scratch = common.private_dir(first_dir / f".portal-restore-{job.pk}")
    kept = []
    try:
        restored = _restore_and_check(run, scratch, progress)
        for disk in run.disks:
            current = Path(disk["path"])
            if current.exists():
                previous = Path(restore_in_place_kept(run, job.pk)[run.disks.index(disk)])
                if not previous.exists():  # delivered again: the first attempt kept it already
                    os.rename(current, previous)
                kept.append(str(previous))
            shutil.move(restored[disk["target"]], current)
        progress(95, f"disks of {run.vm.name} restored; a copy of each disk before the restore is kept at "
                     f"{', '.join(kept) or '(none: no disk file was there)'}: remove it when satisfied")  # fmt: skip
    finally:
        common.remove_tree(scratch)
    return {"vm": run.vm.name, "snapshot": run.snapshot_id, "previous": kept}


# ---------------------------------------------------------------- verification


def backup_verify(*, actor, run: BackupRun) -> Job:
    """Ask for a verification: restore into scratch space, compare checksums, restic check."""
    with audited(actor=actor, action=f"{VERIFY}.request", target=run.vm or run.host, perm="backups.run",
                 params={"run": run.pk}, atomic=True):  # fmt: skip
        _require_good(run)
        return jobs.job_enqueue(actor=actor, kind=VERIFY, target=run.vm or run.host, host=run.host,
                                params={"run": run.pk})  # fmt: skip


@jobs.handler(VERIFY)
def _run_verify(job: Job, progress: jobs.Progress) -> dict:
    run = BackupRun.objects.select_related("vm", "host", "repository").get(pk=job.params["run"])
    authorize(jobs.job_actor(job), "backups.run", run.vm or run.host, action=job.kind)
    _require_good(run)
    scratch = common.private_dir(Path(settings.BACKUP_STAGING_DIR) / f"verify-{job.pk}")
    details: dict = {"snapshot": run.snapshot_id}
    try:
        restored = _restore_and_check(run, scratch, progress)
        details["checksums"] = "match"
        if run.keys_snapshot_id:
            progress(80, "the saved disk keys open the restored disks")
            plan = _key_material_plan(run, scratch / ".keys", restored, for_restore=False)
            details["keys"] = f"{len(plan.disks)} open their disks"
        progress(85, "restic check")
        handle = common.open_repository(run.repository)
        common.with_stale_locks_removed(handle, lambda: restic.check(handle, timeout=settings.BACKUP_COMMAND_TIMEOUT))
        details["repository_check"] = "no errors"
    except (GatewayError, Conflict, NotFound) as exc:
        BackupVerification.objects.create(run=run, job=job, ok=False, details=details, error=exc.message[:1000])
        raise
    finally:
        _discard_key_material(scratch / ".keys")
        common.remove_tree(scratch)
    BackupVerification.objects.create(run=run, job=job, ok=True, details=details)
    return details


# ---------------------------------------------------------------- retention


def backup_prune(*, actor, repository: BackupRepository, keep_last: int = 0, keep_daily: int = 0,
                 keep_weekly: int = 0, keep_monthly: int = 0, policy: BackupPolicy | None = None) -> Job:  # fmt: skip
    """Ask for retention to be applied to every VM's snapshots in the repository (the values
    given), or with `policy` to the snapshots there of the VMs that policy backed up.
    Forgotten runs are marked; their data is pruned."""
    keep = {"keep_last": keep_last, "keep_daily": keep_daily, "keep_weekly": keep_weekly,
            "keep_monthly": keep_monthly}  # fmt: skip
    scope = {"policy": policy.pk} if policy is not None else {}
    with audited(actor=actor, action=f"{PRUNE}.request", target=repository, perm="backups.run",
                 params={"repository": repository.path, **keep, **({"policy": policy.name} if policy else {})},
                 atomic=True):  # fmt: skip
        if any(v < 0 for v in keep.values()) or not any(keep.values()):
            raise InvalidInput("Retention must keep at least one backup (keep-last, -daily, -weekly or -monthly).")
        return jobs.job_enqueue(actor=actor, kind=PRUNE, target=repository, params={"repository": repository.pk,
                                                                                     **keep, **scope})  # fmt: skip


def policy_retention(policy: BackupPolicy) -> dict[str, int]:
    return {"keep_last": policy.keep_last, "keep_daily": policy.keep_daily, "keep_weekly": policy.keep_weekly,
            "keep_monthly": policy.keep_monthly}  # fmt: skip


@jobs.handler(PRUNE)
def _run_prune(job: Job, progress: jobs.Progress) -> dict:
    authorize(jobs.job_actor(job), "backups.run", action=job.kind)
    repository = BackupRepository.objects.get(pk=job.params["repository"])
    try:
        return _prune(job, repository, progress)
    except Exception as exc:  # retention that does not run lets the repository grow: say so
        from apps.monitoring import notifications

        reason = getattr(exc, "message", "") or f"Internal error ({type(exc).__name__}); see the worker log."
        notifications.notify(notifications.Notice(
            source="backup", name="PortalBackupRetentionFailed", subject=repository.path, host="",
            level="warning", state="firing",
            message=f"Retention of the backup repository {repository.path} (job {job.pk}) failed: {reason[:300]}",
        ))  # fmt: skip
        raise


def _prune(job: Job, repository: BackupRepository, progress: jobs.Progress) -> dict:
    keep = {k: int(job.params[k]) for k in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")}
    handle = common.open_repository(repository)
    runs = repository.runs.exclude(snapshot_id="")
    if job.params.get("policy"):
        runs = runs.filter(policy_id=job.params["policy"])  # a policy's retention: its VMs only
    uuids = sorted(set(runs.values_list("vm_uuid", flat=True)))
    removed: list[str] = []
    for index, vm_uuid in enumerate(uuids):
        removed += common.with_stale_locks_removed(handle, lambda u=vm_uuid: restic.forget(
            handle, tags=[f"vm:{u}"], timeout=settings.BACKUP_COMMAND_TIMEOUT, **keep))  # fmt: skip
        progress(10 + 80 * (index + 1) // max(len(uuids), 1), f"retention applied to {index + 1} of {len(uuids)} VMs")
    keys_repos = BackupRepository.objects.filter(pk__in=repository.runs.exclude(keys_repository=None)
                                                 .values("keys_repository"))  # fmt: skip
    for keys_repo in keys_repos:  # the key material follows its disks' retention
        keys_handle = common.open_repository(keys_repo)
        for vm_uuid in uuids:
            common.with_stale_locks_removed(keys_handle, lambda u=vm_uuid, h=keys_handle: restic.forget(
                h, tags=[f"vm:{u}", "luks-keys"], timeout=settings.BACKUP_COMMAND_TIMEOUT, **keep))  # fmt: skip
    forgotten = 0
    for run in repository.runs.filter(forgotten_at__isnull=True, vm_uuid__in=uuids).exclude(snapshot_id=""):
        if any(full.startswith(run.snapshot_id) for full in removed):
            BackupRun.objects.filter(pk=run.pk).update(forgotten_at=timezone.now())
            forgotten += 1
    return {"removed_snapshots": len(removed), "forgotten_runs": forgotten}


def backups_verify_due(now=None) -> list[Job]:
    """Beat: verify the last good backup of every VM whose last successful verification is
    older than its policies allow (the strictest covering policy's verify_max_age_days;
    BACKUP_VERIFY_MAX_AGE_DAYS for a VM no policy covers) or missing, as the system."""
    from datetime import timedelta

    from django.db.models import Max

    from ..selectors import verify_max_age_days

    now = now or timezone.now()
    latest = (BackupRun.objects.filter(state=BackupRun.State.SUCCEEDED, forgotten_at__isnull=True, vm__isnull=False)
              .exclude(snapshot_id="").values("vm_id").annotate(last=Max("pk")))  # fmt: skip
    latest = list(latest)
    allowed = verify_max_age_days(VirtualMachine.objects.filter(pk__in=[row["vm_id"] for row in latest]))
    started = []
    for row in latest:
        run = BackupRun.objects.select_related("vm", "host", "repository").get(pk=row["last"])
        cutoff = now - timedelta(days=allowed.get(row["vm_id"], settings.BACKUP_VERIFY_MAX_AGE_DAYS))
        verified = BackupVerification.objects.filter(run__vm_id=row["vm_id"], ok=True, checked_at__gte=cutoff)
        busy = Job.objects.filter(kind=VERIFY, params__run=run.pk, state__in=[Job.State.QUEUED, Job.State.RUNNING])
        if verified.exists() or busy.exists():
            continue
        try:
            started.append(backup_verify(actor=None, run=run))
        except (Conflict, NotFound, InvalidInput):
            continue  # audited as a failed request
    return started


def repository_busy(repository: BackupRepository) -> str:
    """Why restic's exclusive lock (prune) should not be taken on `repository` now: a
    backup run, a restore, a verification or a retention job on it queued or running; ""
    when it is free."""
    active = [Job.State.QUEUED, Job.State.RUNNING]
    if BackupRun.objects.filter(repository=repository, state__in=BackupRun.ACTIVE).exists():
        return "a backup run"
    if Job.objects.filter(kind=PRUNE, state__in=active, params__repository=repository.pk).exists():
        return "a retention job"
    reading = Job.objects.filter(kind__in=[RESTORE, RESTORE_IN_PLACE, VERIFY], state__in=active)
    run_ids = {r for r in reading.values_list("params__run", flat=True) if r is not None}
    if run_ids and BackupRun.objects.filter(pk__in=run_ids, repository=repository).exists():
        return "a restore or verification"
    return ""


def backups_prune_due() -> list[Job]:
    """Beat: apply each enabled policy's retention (its keep-last/daily/weekly/monthly, to
    the VMs it backed up) in each repository where a run of the policy succeeded since the
    policy's last successful retention there, as the system. Pruning takes restic's
    exclusive lock: while anything runs on that repository (its backups first), it waits
    for a later beat. A failed retention is tried again on the next beat (and alerts)."""
    started = []
    for policy in BackupPolicy.objects.filter(enabled=True):
        finished = BackupRun.objects.filter(policy=policy, state=BackupRun.State.SUCCEEDED, forgotten_at__isnull=True)
        for repository in BackupRepository.objects.filter(pk__in=finished.values("repository_id")):
            last = (Job.objects.filter(kind=PRUNE, state=Job.State.SUCCEEDED, params__policy=policy.pk,
                                       params__repository=repository.pk).order_by("-created_at").first())  # fmt: skip
            newer = finished.filter(repository=repository)
            if last is not None:
                newer = newer.filter(finished_at__gt=last.created_at)
            if not newer.exists() or repository_busy(repository):
                continue
            try:
                started.append(backup_prune(actor=None, repository=repository, policy=policy,
                                            **policy_retention(policy)))  # fmt: skip
            except (Conflict, NotFound, InvalidInput):
                continue  # audited as a failed request
    return started
