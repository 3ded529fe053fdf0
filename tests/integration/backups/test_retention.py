"""Retention by day and month, not only "keep last": snapshots taken on chosen dates (restic
`backup --time`) in a repository the portal made, then the portal's prune job with a
policy's keep-daily and keep-monthly. restic keeps the newest snapshot of each of the last
N days (months); the runs whose snapshots it removed are marked forgotten, the rest stay good."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

from apps.backups import services
from apps.backups.models import BackupPolicy, BackupRun
from apps.backups.services import common
from apps.core.gateways import restic
from apps.vms.models import VirtualMachine

from .conftest import run_job

TIMES = ["2026-04-15 08:00:00", "2026-06-01 10:00:00", "2026-06-01 12:00:00", "2026-06-02 09:00:00"]


def snapshot_at(handle: restic.Repository, path: str, when: str, tag: str) -> str:
    read_end, write_end = os.pipe()
    os.write(write_end, handle.password)
    os.close(write_end)
    try:
        out = subprocess.run(
            ["restic", "--repo", handle.path, "--password-file", f"/dev/fd/{read_end}", "--no-cache", "backup",
             "--json", "--time", when, "--tag", tag, "--host", "retention", path],
            capture_output=True, text=True, pass_fds=(read_end,), timeout=120,
            env={"PATH": restic.PATH, "HOME": handle.path},
        )  # fmt: skip
    finally:
        os.close(read_end)
    assert out.returncode == 0, out.stderr
    summary = [json.loads(line) for line in out.stdout.splitlines() if '"summary"' in line][-1]
    return summary["snapshot_id"]


def test_a_policys_daily_and_monthly_retention_keeps_the_newest_of_each_day_and_month(
    operator, host, destination, tmp_path
):
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="kept")
    repository = services.repository_for(destination)
    handle = common.open_repository(repository, initialize=True)
    data = tmp_path / "disk.img"
    runs = {}
    for when in TIMES:
        data.write_bytes(os.urandom(64 << 10))
        snap = snapshot_at(handle, str(data), when, f"vm:{vm.uuid}")
        runs[when] = BackupRun.objects.create(vm=vm, vm_name=vm.name, vm_uuid=str(vm.uuid), host=host,
                                              repository=repository, state="succeeded",
                                              snapshot_id=snap[:8])  # fmt: skip
    policy = BackupPolicy.objects.create(name="monthly", destination=destination, keep_last=0, keep_daily=2,
                                         keep_weekly=0, keep_monthly=2)  # fmt: skip

    job = run_job(services.backup_prune(actor=operator, repository=repository, **services.policy_retention(policy)))

    assert job.state == "succeeded", job.error
    # daily: 06-02 and 06-01 12:00 (the newest of 06-01); monthly: June (06-02) and April
    assert job.result == {"removed_snapshots": 1, "forgotten_runs": 1}
    kept = {s.short_id for s in restic.snapshots(handle, tags=[f"vm:{vm.uuid}"])}
    assert kept == {runs[t].snapshot_id for t in (TIMES[0], TIMES[2], TIMES[3])}
    for when, run in runs.items():
        run.refresh_from_db()
        assert run.good == (when != "2026-06-01 10:00:00"), when
    restic.check(handle, timeout=60)


# ISO weeks 23, 23, 24, 24 (Monday, Wednesday, Monday, Thursday)
WEEKS = ["2026-06-01 08:00:00", "2026-06-03 08:00:00", "2026-06-08 08:00:00", "2026-06-11 08:00:00"]


def test_weekly_retention_keeps_the_newest_of_each_of_the_last_weeks(operator, host, destination, tmp_path):
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="weekly")
    repository = services.repository_for(destination)
    handle = common.open_repository(repository, initialize=True)
    data = tmp_path / "disk.img"
    runs = {}
    for when in WEEKS:
        data.write_bytes(os.urandom(64 << 10))
        snap = snapshot_at(handle, str(data), when, f"vm:{vm.uuid}")
        runs[when] = BackupRun.objects.create(vm=vm, vm_name=vm.name, vm_uuid=str(vm.uuid), host=host,
                                              repository=repository, state="succeeded",
                                              snapshot_id=snap[:8])  # fmt: skip
    policy = BackupPolicy.objects.create(name="weekly", destination=destination, keep_last=0, keep_daily=0,
                                         keep_weekly=2, keep_monthly=0)  # fmt: skip

    job = run_job(services.backup_prune(actor=operator, repository=repository, **services.policy_retention(policy)))

    assert job.state == "succeeded", job.error
    # the newest of each week: 06-11 (not 06-08, which keep-last 2 would keep) and 06-03 (not 06-01)
    kept = {WEEKS[1], WEEKS[3]}
    assert job.result == {"removed_snapshots": 2, "forgotten_runs": 2}
    assert {s.short_id for s in restic.snapshots(handle, tags=[f"vm:{vm.uuid}"])} == {runs[t].snapshot_id
                                                                                      for t in kept}  # fmt: skip
    for when, run in runs.items():
        run.refresh_from_db()
        assert run.good == (when in kept), when
