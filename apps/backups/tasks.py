from celery import shared_task
from celery.signals import worker_ready

from . import services


@shared_task(acks_late=True)
def backups_due():
    services.backup_runs_reconcile()
    return len(services.backups_due())


@shared_task(acks_late=True)
def backups_verify_due():
    return len(services.backups_verify_due())


@worker_ready.connect
def _interrupted_runs_failed(sender, **kwargs):
    services.backup_runs_reconcile()  # after the core marked this worker's lost jobs failed
