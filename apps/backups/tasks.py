from celery import shared_task
from celery.signals import worker_ready

from . import services


@shared_task(acks_late=True)
def backups_due():
    """Beat: start the runs of due policies, then apply the retention of policies whose runs
    finished (a repository with anything running on it waits for a later beat)."""
    services.backup_runs_reconcile()
    started = services.backups_due()
    services.backups_prune_due()
    return len(started)


@shared_task(acks_late=True)
def backups_verify_due():
    return len(services.backups_verify_due())


@worker_ready.connect
def _interrupted_runs_failed(sender, **kwargs):
    services.backup_runs_reconcile()  # after the core marked this worker's lost jobs failed
