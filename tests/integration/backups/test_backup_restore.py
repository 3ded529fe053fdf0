"""Backups for real: restic, libvirt, the key store. A shut-off VM is read directly; a
restore defines a new VM whose disks match the checksums recorded at backup time, and it
boots; that running VM is backed up through an external snapshot committed back;
verification and retention. (One booted VM in this module: the restored one.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from django.conf import settings

from apps.audit.models import AuditEvent
from apps.backups import services
from apps.backups.models import BackupRun, BackupVerification
from apps.backups.services import common
from apps.core import runner
from apps.core.gateways import libvirt as gw
from apps.core.gateways import restic
from apps.core.models import Job
from apps.vms.models import VirtualMachine
from tests.conftest import unique

from .conftest import run_job


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def spy_on_commands(monkeypatch) -> list[str]:
    """Every argv word and environment value of the commands run from now on."""
    seen: list[str] = []
    real_run, real_stream = runner.run, runner.stream

    def spy_run(argv, **kw):
        seen.extend([*argv, *(kw.get("env") or {}).values()])
        return real_run(argv, **kw)

    def spy_stream(argv, **kw):
        seen.extend([*argv, *(kw.get("env") or {}).values()])
        return real_stream(argv, **kw)

    monkeypatch.setattr(runner, "run", spy_run)
    monkeypatch.setattr(runner, "stream", spy_stream)
    return seen


def backup(actor, vm, destination) -> BackupRun:
    run = services.backup_start(actor=actor, vm=vm, destination=destination)
    job = run_job(run.job)
    run.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    return run


def test_a_shut_off_vm_is_backed_up_restored_as_a_new_vm_verified_and_pruned(
    monkeypatch, operator, shut_vm_with_data, destination, libvirt_uri, test_pool
):
    vm, data_path = shut_vm_with_data
    seen = spy_on_commands(monkeypatch)
    first = backup(operator, vm, destination)
    # the repository password reached restic through a descriptor, never argv or the environment
    password = common.repository_password(first.repository).decode()
    assert any(a.startswith("/dev/fd/") for a in seen), "restic was not given the password through a descriptor"
    assert not any(password in a or password[:32] in a for a in seen)
    assert "RESTIC_PASSWORD" not in " ".join(seen)

    assert first.state == "succeeded" and first.good and first.method == "offline"
    assert first.snapshot_id and first.bytes_total >= 8 << 20
    by_target = {d["target"]: d for d in first.disks}
    assert by_target["vdb"]["sha256"] == sha256(data_path)
    assert f"<uuid>{vm.uuid}</uuid>" in first.domain_xml
    # the repository is restic's, encrypted: its password is not beside it, and no plaintext disk byte is there
    assert restic.is_repository(destination)
    assert not any("password" in p.name for p in Path(destination).rglob("*"))

    # an unchanged second run stores (almost) nothing new: restic deduplicates
    second = backup(operator, vm, destination)
    assert second.data_added < (1 << 20), second.data_added

    # restore the first backup as a new VM: new UUID and MACs, disks equal to what was recorded; it boots
    new_name = unique("restored")
    try:
        job = run_job(services.backup_restore(actor=operator, run=first, new_name=new_name, pool=test_pool))
        assert job.state == "succeeded", job.error
        restored_xml = gw.domain_xml_defined(libvirt_uri, new_name)
        assert f"<uuid>{vm.uuid}</uuid>" not in restored_xml
        old_macs = {i["mac"] for i in gw.domain_devices_parse(first.domain_xml)[1]}
        new_macs = {i["mac"] for i in gw.domain_devices_parse(restored_xml)[1]}
        assert new_macs and not new_macs & old_macs
        disks = {d["target"]: d["path"] for d in gw.domain_disks_parse(restored_xml)}
        assert sha256(disks["vdb"]) == by_target["vdb"]["sha256"]
        assert sha256(disks["vda"]) == by_target["vda"]["sha256"]
        restored = VirtualMachine.objects.get(name=new_name, present=True)
        gw.domain_start(libvirt_uri, new_name)
        assert gw.domain_state(libvirt_uri, new_name) == "running"

        # a running VM is frozen by an external snapshot, backed up, and committed back
        live_before = gw.domain_disks_parse(gw.domain_xml_live(libvirt_uri, new_name))
        running = backup(operator, restored, destination)
        assert running.method == "external-snapshot"
        assert gw.domain_state(libvirt_uri, new_name) == "running"
        live_after = gw.domain_disks_parse(gw.domain_xml_live(libvirt_uri, new_name))
        assert [d["path"] for d in live_after] == [d["path"] for d in live_before], "the guest was not pivoted back"
        assert not list(Path(disks["vda"]).parent.glob("*.portal-backup-*")), "an overlay was left behind"
        assert {d["target"]: d["sha256"] for d in running.disks}["vdb"] == by_target["vdb"]["sha256"]
    finally:
        try:
            gw.domain_undefine(libvirt_uri, new_name)
        finally:
            for path in Path(gw.pool_path(libvirt_uri, test_pool)).glob(f"{new_name}-*"):
                path.unlink()

    # verification restores into scratch space, compares checksums, runs restic check
    job = run_job(services.backup_verify(actor=operator, run=first))
    assert job.state == "succeeded", job.error
    verification = BackupVerification.objects.get(run=first)
    assert verification.ok and verification.details["checksums"] == "match"
    assert not list(Path(settings.BACKUP_STAGING_DIR).glob("verify-*")), "the scratch space is left behind"

    # retention: keep the last one; the first run is marked forgotten, restic keeps one snapshot
    job = run_job(services.backup_prune(actor=operator, repository=first.repository, keep_last=1))
    assert job.state == "succeeded", job.error
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.forgotten_at is not None and not first.good
    assert second.good
    handle = common.open_repository(first.repository)
    kept = [s.short_id for s in restic.snapshots(handle, tags=[f"vm:{vm.uuid}"])]
    assert kept == [second.snapshot_id[:8]]
    actions = set(AuditEvent.objects.values_list("action", "outcome"))
    assert {("backups.vm.backup", "success"), ("backups.vm.restore", "success"), ("backups.run.verify", "success"),
            ("backups.repository.prune", "success")} <= actions  # fmt: skip


@pytest.mark.parametrize("destination", ["/tmp/elsewhere", "relative/path", "/"])
def test_a_destination_outside_the_allowed_roots_is_refused_and_audited(operator, shut_vm_with_data, destination):
    vm, _ = shut_vm_with_data
    with pytest.raises(services.common.InvalidInput, match="absolute|outside the allowed"):
        services.backup_start(actor=operator, vm=vm, destination=destination)
    assert not BackupRun.objects.exists()
    event = AuditEvent.objects.filter(action="backups.vm.backup.request").latest("id")
    assert event.outcome == "failed"
    assert "outside the allowed backup roots" in event.error or "absolute path" in event.error


def test_a_symlink_out_of_the_allowed_root_is_refused(operator, shut_vm_with_data, tmp_path):
    vm, _ = shut_vm_with_data
    root = settings.BACKUP_ALLOWED_ROOTS[0]
    root.mkdir(parents=True, exist_ok=True)
    link = root / unique("link")
    link.symlink_to(tmp_path)
    try:
        with pytest.raises(services.common.InvalidInput, match="outside the allowed"):
            services.backup_start(actor=operator, vm=vm, destination=str(link / "repo"))
    finally:
        link.unlink()


def test_restore_in_place_needs_confirmation_and_keeps_the_previous_disk(operator, shut_vm_with_data, destination):
    from .conftest import write_random

    vm, data_path = shut_vm_with_data
    run = backup(operator, vm, destination)
    changed = write_random(data_path, 8)  # the guest's data changed since the backup

    with pytest.raises(services.common.InvalidInput, match="needs confirmation"):
        services.backup_restore_in_place(actor=operator, run=run)
    job = run_job(services.backup_restore_in_place(actor=operator, run=run, confirmed=True))

    assert job.state == "succeeded", job.error
    assert sha256(data_path) == {d["target"]: d["sha256"] for d in run.disks}["vdb"]
    previous = Path(f"{data_path}.pre-restore-{job.pk}")
    assert sha256(str(previous)) == changed  # the version it replaced is kept, not lost
    previous.unlink()
    assert not list(Path(data_path).parent.glob(".portal-restore-*"))
