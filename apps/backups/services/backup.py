"""Back up one VM as a job: a consistent copy of its disks (shut-off VMs are read directly;
running ones are frozen with an external disk-only snapshot, then committed back), its
definition and a manifest of checksums, into a restic repository. Progress (bytes,
throughput, time left) is written to the run row as restic reports it."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.services import audited
from apps.core import jobs
from apps.core.errors import Conflict, GatewayError, InvalidInput, PortalError
from apps.core.gateways import libvirt as gw
from apps.core.gateways import restic
from apps.core.models import Job
from apps.vms.models import VirtualMachine

from ..models import BackupPolicy, BackupRepository, BackupRun
from . import common

KIND = "backups.vm.backup"
OVERLAY_MARK = ".portal-backup-"
RUNNING_STATES = {"running", "paused", "pmsuspended"}


def backup_start(*, actor, vm: VirtualMachine, destination: str, policy: BackupPolicy | None = None) -> BackupRun:
    """Ask for a backup of `vm` into the repository at `destination`; it runs as a job."""
    params = {"destination": destination, "policy": policy.name if policy else ""}
    with audited(actor=actor, action=f"{KIND}.request", target=vm, perm="backups.run", params=params, atomic=True):
        repo = common.repository_for(destination)
        if _has_key_material(vm):
            common.keys_repository_for(destination)  # its key material has somewhere apart to go
        if BackupRun.objects.filter(vm=vm, state__in=BackupRun.ACTIVE).exists():
            raise Conflict(f"A backup of {vm.name} is already queued or running.")
        run = BackupRun.objects.create(
            vm=vm, vm_name=vm.name, vm_uuid=str(vm.uuid), host=vm.host, policy=policy, repository=repo
        )
        run.job = jobs.job_enqueue(actor=actor, kind=KIND, target=vm, host=vm.host,
                                   params={"run": run.pk, "destination": repo.path})  # fmt: skip
        run.save(update_fields=["job"])
        return run


def _fail_run(run_id: int, error: str) -> None:
    """Mark the run failed (once) and say so on every notification channel."""
    from apps.monitoring import notifications

    with transaction.atomic():
        changed = BackupRun.objects.filter(pk=run_id, state__in=BackupRun.ACTIVE).update(
            state=BackupRun.State.FAILED, error=error[:1000], finished_at=timezone.now(), seconds_left=None
        )
        if changed:
            run = BackupRun.objects.select_related("host").get(pk=run_id)
            notifications.notify(
                notifications.Notice(
                    source="backup", name="PortalBackupFailed", subject=run.vm_name,
                    host=run.host.name if run.host else "", level="warning", state="firing",
                    message=f"Backup #{run.pk} of {run.vm_name} failed: {error[:300]}",
                )
            )  # fmt: skip


def backup_runs_reconcile() -> int:
    """Runs whose job ended (failed, or its worker was lost and the reaper failed it)
    while the run still says queued/running are marked failed: an interrupted run is never
    listed as good. Called by the worker at start, by beat, and before each backup."""
    count = 0
    for run in BackupRun.objects.filter(state__in=BackupRun.ACTIVE, job__state__in=Job.FINISHED).select_related("job"):
        error = run.job.error or "The job of this backup ended before the backup finished."
        _fail_run(run.pk, f"Interrupted: {error}")
        count += 1
    return count


@jobs.handler(KIND, lost_hint="The backup was not completed; the repository keeps only finished snapshots.")
def _run_backup(job: Job, progress: jobs.Progress) -> dict:
    backup_runs_reconcile()
    run = BackupRun.objects.select_related("vm__host", "repository").get(pk=job.params["run"])
    if run.state == BackupRun.State.SUCCEEDED:
        return {"snapshot": run.snapshot_id}  # delivered again after it finished
    try:
        if run.vm is None:
            raise Conflict("The VM of this backup no longer exists.")
        authorize(jobs.job_actor(job), "backups.run", run.vm, action=job.kind)
        BackupRun.objects.filter(pk=run.pk).update(
            state=BackupRun.State.RUNNING, started_at=timezone.now(), error="", finished_at=None
        )
        return _backup(run, progress)
    except BaseException as exc:
        if isinstance(exc, PortalError):
            _fail_run(run.pk, exc.message)
        elif isinstance(exc, PermissionDenied):
            _fail_run(run.pk, str(exc))
        else:
            _fail_run(run.pk, f"Internal error ({type(exc).__name__}); see the worker log.")
        raise


def _disks_to_copy(vm: VirtualMachine, xml: str, running: bool) -> list[dict]:
    """What to read for each disk, or Conflict naming why the VM cannot be copied
    consistently. Encrypted disks are read as their containers (they stay encrypted)."""
    from apps.encryption.models import EncryptedDisk
    from apps.encryption.services.common import container_paths

    containers = container_paths(vm.host)  # {unlocked mapping path: LUKS2 container}
    encrypted = set(EncryptedDisk.objects.filter(vm=vm).values_list("path", flat=True))
    out = []
    for disk in gw.domain_disks_parse(xml):
        path, source = disk["path"], disk["path"]
        luks2 = path in containers
        if luks2:
            source = containers[path]
            if running:
                raise Conflict(f"{vm.name} runs on a host-opened LUKS2 disk ({disk['target']}); it cannot be copied "
                               "consistently while running. Shut it down, then back it up.")  # fmt: skip
        elif disk["type"] != "file":
            raise Conflict(f"Disk {disk['target']} of {vm.name} is a {disk['type']} device; the portal backs up "
                           "file disks only. Nothing was copied.")  # fmt: skip
        if running and disk["shareable"]:
            raise Conflict(f"Disk {disk['target']} of {vm.name} is shared with other VMs; it cannot be copied "
                           "consistently while they run.")  # fmt: skip
        if not source or not Path(source).is_file():
            raise Conflict(f"Disk {disk['target']} of {vm.name} has no readable file ({source or 'no source'}).")
        out.append({"target": disk["target"], "path": source, "format": "raw" if luks2 else disk["format"],
                    "encrypted": luks2 or source in encrypted, "luks2": luks2})  # fmt: skip
    if not out:
        raise Conflict(f"{vm.name} has no disk to back up.")
    return out


def _commit_leftovers(uri: str, name: str) -> None:
    """An earlier attempt killed mid-run may have left the guest on our overlays: merge
    them back before anything else."""
    for disk in gw.domain_disks_parse(gw.domain_xml_live(uri, name)):
        if OVERLAY_MARK in Path(disk["path"]).name:
            gw.domain_disk_commit_active(uri, name, disk["target"])
            Path(disk["path"]).unlink(missing_ok=True)


def _has_key_material(vm: VirtualMachine) -> bool:
    from apps.encryption.services.backup_material import vm_has_key_material

    return vm_has_key_material(vm)


def _backup_key_material(run: BackupRun, progress: jobs.Progress) -> None:
    """The VM's LUKS headers and wrapped disk keys (made by the encryption app) go into a
    restic repository of their own, apart from the disk images, before the disks are read:
    a backup whose disks could not be opened again is not made."""
    from apps.encryption.services import backup_material

    keys_repo = common.keys_repository_for(run.repository.path)
    handle = common.open_repository(keys_repo, initialize=True)
    staging = Path(settings.BACKUP_STAGING_DIR) / f"keys-{run.pk}"
    common.remove_tree(staging)  # an earlier, killed attempt's
    common.private_dir(staging)
    try:
        progress(3, "saving the LUKS headers and disk keys (apart from the disks)")
        backup_material.key_material_export(run.vm, staging)
        summary = common.with_stale_locks_removed(handle, lambda: restic.backup(
            handle, [str(staging)], tags=[f"vm:{run.vm_uuid}", "luks-keys"], host=run.vm.host.name,
            timeout=settings.BACKUP_COMMAND_TIMEOUT))  # fmt: skip
    finally:
        backup_material.key_material_discard(staging)
    BackupRun.objects.filter(pk=run.pk).update(keys_repository=keys_repo, keys_snapshot_id=summary.snapshot_id)


def _backup(run: BackupRun, progress: jobs.Progress) -> dict:
    vm, uri = run.vm, run.vm.host.uri
    handle = common.open_repository(run.repository, initialize=True)  # key store first: fail closed
    if _has_key_material(vm):
        _backup_key_material(run, progress)
    state = gw.domain_state(uri, vm.name)
    running = state in RUNNING_STATES
    if running:
        _commit_leftovers(uri, vm.name)
    definition = gw.domain_xml_defined(uri, vm.name)
    disks = _disks_to_copy(vm, gw.domain_xml_live(uri, vm.name) if running else definition, running)
    staging = common.private_dir(Path(settings.BACKUP_STAGING_DIR) / str(vm.uuid))
    (staging / "domain.xml").write_text(definition)
    manifest = {"vm": vm.name, "uuid": str(vm.uuid), "host": vm.host.name, "run": run.pk,
                "disks": [{k: d[k] for k in ("target", "path", "format", "encrypted")} for d in disks]}  # fmt: skip
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    BackupRun.objects.filter(pk=run.pk).update(method="external-snapshot" if running else "offline",
                                               domain_xml=definition)  # fmt: skip
    overlays: dict[str, str] = {}
    if running:
        overlays = {d["target"]: f"{d['path']}{OVERLAY_MARK}{run.pk}" for d in disks}
        all_targets = [d["target"] for d in gw.domain_disks_parse(gw.domain_xml_live(uri, vm.name))]
        progress(5, f"freezing the disks of {vm.name} (external snapshot)")
        gw.snapshot_create_disk_only(uri, vm.name, gw.snapshot_disk_only_xml(
            f"portal-backup-{run.pk}", overlays, all_targets))  # fmt: skip
    try:
        summary, sums = _copy(run, handle, disks, staging, progress)
    finally:
        if running:
            progress(95, "merging the guest's writes back (block commit)")
            for target, overlay in overlays.items():
                try:
                    gw.domain_disk_commit_active(uri, vm.name, target)
                except PortalError as exc:
                    raise GatewayError(f"{vm.name} still runs on the overlay {overlay}: {exc.message}") from None
                Path(overlay).unlink(missing_ok=True)
    for disk in disks:
        disk["sha256"], disk["size"], disk["identity"] = sums[disk["path"]]
    BackupRun.objects.filter(pk=run.pk).update(
        state=BackupRun.State.SUCCEEDED, snapshot_id=summary.snapshot_id, data_added=summary.data_added,
        disks=disks, bytes_done=summary.bytes_processed, bytes_total=summary.bytes_processed,
        finished_at=timezone.now(), seconds_left=0, error="",
    )  # fmt: skip
    return {"snapshot": summary.snapshot_id, "bytes": summary.bytes_processed, "added": summary.data_added}


def _previous_disks(run: BackupRun) -> dict[str, dict]:
    """{path: disk entry} of the VM's last good run into the same repository (an offline one,
    or the frozen files of a running one: both read files that no longer changed)."""
    last = (BackupRun.objects.filter(vm_id=run.vm_id, repository_id=run.repository_id, state=BackupRun.State.SUCCEEDED,
                                     forgotten_at__isnull=True).exclude(pk=run.pk).exclude(snapshot_id="")
            .order_by("-finished_at", "-pk").first())  # fmt: skip
    return {d["path"]: d for d in (last.disks if last else []) if d.get("identity")}


def _copy(run, handle, disks, staging: Path, progress: jobs.Progress):
    """restic reads the frozen files while a thread computes their checksums (the page
    cache serves the second reader)."""
    last = [0.0]

    def on_progress(p: restic.Progress) -> None:
        now = time.monotonic()
        if now - last[0] < 1 and p.bytes_done < p.bytes_total:
            return
        last[0] = now
        rate = int(p.bytes_done / p.seconds_elapsed) if p.seconds_elapsed else 0
        BackupRun.objects.filter(pk=run.pk).update(bytes_done=p.bytes_done, bytes_total=p.bytes_total,
                                                   bytes_per_second=rate, seconds_left=p.seconds_remaining)  # fmt: skip
        progress(10 + int(80 * p.percent), f"{p.bytes_done >> 20} of {p.bytes_total >> 20} MiB")

    paths = [d["path"] for d in disks]
    previous = _previous_disks(run)
    # ciphertext does not compress: restic's attempt would only cost CPU (~20% of its work)
    compression = "off" if all(d["encrypted"] for d in disks) else settings.BACKUP_COMPRESSION
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = pool.map(lambda p: common.checksum(p, previous.get(p)), paths)
        progress(10, f"backing up {len(paths)} disk(s) to {run.repository.path}")
        summary = common.with_stale_locks_removed(handle, lambda: restic.backup(
            handle, [*paths, str(staging)], tags=[f"vm:{run.vm_uuid}"], host=run.vm.host.name,
            timeout=settings.BACKUP_COMMAND_TIMEOUT, on_progress=on_progress, compression=compression))  # fmt: skip
        sums = dict(zip(paths, hashing, strict=True))
    return summary, sums


def backup_policy_vms(policy: BackupPolicy):
    qs = VirtualMachine.objects.filter(present=True).select_related("host")
    if policy.selector == BackupPolicy.Selector.ZONE:
        return qs.filter(zone=policy.zone)
    if policy.selector == BackupPolicy.Selector.NAMES:
        return qs.filter(name__in=policy.vm_names)
    return qs


def backups_due(now=None) -> list[BackupRun]:
    """Beat: start the runs of every enabled policy whose interval has passed (as the system)."""
    now = now or timezone.now()
    started = []
    for policy in BackupPolicy.objects.filter(enabled=True):
        due = policy.last_scheduled_at is None or (now - policy.last_scheduled_at).total_seconds() >= (
            policy.interval_hours * 3600
        )
        if not due or _retention_running(policy):
            continue  # a retention job holds restic's exclusive lock there: the runs start on a later beat
        BackupPolicy.objects.filter(pk=policy.pk).update(last_scheduled_at=now)
        for vm in backup_policy_vms(policy):
            try:
                started.append(backup_start(actor=None, vm=vm, destination=policy.destination, policy=policy))
            except PortalError:
                continue  # audited as a failed request; the next VM still runs
    return started


def _retention_running(policy: BackupPolicy) -> bool:
    from .restore import PRUNE

    try:
        path = common.validate_destination(policy.destination)
    except InvalidInput:
        return False  # its runs are refused with the reason (audited)
    repository = BackupRepository.objects.filter(path=path).first()
    return repository is not None and Job.objects.filter(
        kind=PRUNE, state__in=[Job.State.QUEUED, Job.State.RUNNING], params__repository=repository.pk
    ).exists()


def backup_policy_create(*, actor, name: str, destination: str, selector: str = "all", zone: str = "",
                         vm_names: list[str] | None = None, interval_hours: int = 24, keep_last: int = 7,
                         keep_daily: int = 7, keep_weekly: int = 4, keep_monthly: int = 6,
                         verify_max_age_days: int = 7, enabled: bool = True) -> BackupPolicy:  # fmt: skip
    from apps.core.validators import validate_name

    params = {"name": name, "destination": destination, "selector": selector}
    with audited(actor=actor, action="backups.policy.create", perm="backups.run", params=params, atomic=True) as ev:
        validate_name(name, "policy name")
        keep = {"keep_last": keep_last, "keep_daily": keep_daily, "keep_weekly": keep_weekly,
                "keep_monthly": keep_monthly}  # fmt: skip
        _check_policy(selector=selector, zone=zone, vm_names=list(vm_names or []), interval_hours=interval_hours,
                      verify_max_age_days=verify_max_age_days, keep=keep)  # fmt: skip
        if BackupPolicy.objects.filter(name=name).exists():
            raise Conflict(f"A backup policy named {name!r} exists.")
        path = common.validate_destination(destination)
        policy = BackupPolicy.objects.create(
            name=name, destination=path, selector=selector, zone=zone, vm_names=list(vm_names or []),
            interval_hours=interval_hours, keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly,
            keep_monthly=keep_monthly, verify_max_age_days=verify_max_age_days, enabled=enabled,
        )  # fmt: skip
        ev.target = ("backuppolicy", str(policy.pk), policy.name)
        return policy



def _check_policy(*, selector: str, zone: str, vm_names: list[str], keep: dict, interval_hours: int,
                  verify_max_age_days: int) -> None:  # fmt: skip
    from apps.core.validators import validate_name

    if selector not in BackupPolicy.Selector.values:
        raise InvalidInput(f"Unknown VM selector {selector!r}.")
    if selector == BackupPolicy.Selector.ZONE:
        validate_name(zone, "zone")
    if selector == BackupPolicy.Selector.NAMES and not vm_names:
        raise InvalidInput("Name at least one VM for a policy that selects VMs by name.")
    for vm_name in vm_names:
        validate_name(vm_name, "VM name")
    if any(int(v) < 0 for v in keep.values()) or not any(keep.values()):
        raise InvalidInput("A retention policy must keep something.")
    if not 1 <= int(interval_hours) <= 24 * 366:
        raise InvalidInput("The interval must be between 1 hour and a year.")
    if not 1 <= int(verify_max_age_days) <= 3650:
        raise InvalidInput("The verification age must be between 1 and 3650 days.")


def backup_policy_update(*, actor, policy: BackupPolicy, **changes) -> BackupPolicy:
    """Change a policy's VMs, schedule, destination, retention or switch. Audited with the
    values before and after (only those that changed); the services check everything the
    form did (the command line calls this too)."""
    unknown = set(changes) - set(BackupPolicy.EDITABLE)
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)}")
    with audited(actor=actor, action="backups.policy.update", target=policy, perm="backups.run",
                 params={"name": policy.name}, atomic=True) as ev:  # fmt: skip
        locked = BackupPolicy.objects.select_for_update().get(pk=policy.pk)
        before = locked.settings_dict()
        after = {**before, **changes}
        after["vm_names"] = list(after["vm_names"] or [])
        if after["selector"] != BackupPolicy.Selector.ZONE:
            after["zone"] = ""
        if after["selector"] != BackupPolicy.Selector.NAMES:
            after["vm_names"] = []
        keep = {k: after[k] for k in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")}
        _check_policy(selector=after["selector"], zone=after["zone"], vm_names=after["vm_names"], keep=keep,
                      interval_hours=after["interval_hours"],
                      verify_max_age_days=after["verify_max_age_days"])  # fmt: skip
        if after["destination"] != before["destination"]:
            after["destination"] = common.validate_destination(after["destination"])
            common.repository_for(after["destination"])  # refused now if it holds another repository
        changed = {k for k in after if after[k] != before[k]}
        ev.params["before"] = {k: before[k] for k in sorted(changed)}
        ev.params["after"] = {k: after[k] for k in sorted(changed)}
        for field in changed:
            setattr(locked, field, after[field])
        if changed:
            locked.save(update_fields=sorted(changed))
        return locked
