"""The progress bar of a run is fed by a live restic run: restic's JSON status lines reach
the portal's callback with growing byte counts, and the callback writes them to the run's
row (what the page's progress bar reads) while the run is still running."""

from __future__ import annotations

from apps.backups import services
from apps.backups.models import BackupRun
from apps.core.gateways import restic

from .conftest import run_job, write_random


def test_a_live_backup_moves_the_runs_progress_fields(operator, shut_vm_with_data, destination, monkeypatch):
    vm, data_path = shut_vm_with_data
    write_random(data_path, 96)  # the data disk grows to 96 MiB of random data: a run of a second or more
    env = restic._env
    # restic prints a status line once a second for the portal; 20 a second here, so a short run shows several
    monkeypatch.setattr(restic, "_env", lambda repo: {**env(repo), "RESTIC_PROGRESS_FPS": "20"})
    run = services.backup_start(actor=operator, vm=vm, destination=destination)
    seen, rows = [], []
    real_backup = restic.backup

    def spy(handle, paths, *, on_progress=None, **kwargs):
        def fed(p: restic.Progress) -> None:
            seen.append(p)
            on_progress(p)  # the portal's callback: writes the row (at most once a second, and the last)
            rows.append(BackupRun.objects.values_list("state", "bytes_done", "bytes_total").get(pk=run.pk))

        return real_backup(handle, paths, on_progress=fed, **kwargs)

    monkeypatch.setattr(restic, "backup", spy)

    assert run_job(run.job).state == "succeeded"

    run.refresh_from_db()
    done = [p.bytes_done for p in seen]
    assert len(seen) >= 3, seen
    assert done == sorted(done), "restic's byte counts went backwards"
    assert any(0 < d < run.bytes_total for d in done), f"no status line mid-run: {done}"
    assert max(p.bytes_total for p in seen) == run.bytes_total >= 96 << 20
    assert {state for state, _, _ in rows} == {"running"}  # written while the run ran, before its summary
    assert any(total > 0 for _, _, total in rows), rows
    row_done = [d for _, d, _ in rows]
    assert row_done == sorted(row_done)
    assert run.bytes_done == run.bytes_total and run.percent == 100
