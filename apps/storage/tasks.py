from celery import shared_task

from .services import storage_check as _storage_check


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def storage_check():
    """Celery beat, every STORAGE_CHECK_INTERVAL seconds: measure, alert, act, sample."""
    report = _storage_check(actor=None)
    return {"vms": report.vms, "pools": report.pools, "raised": len(report.raised), "cleared": len(report.cleared)}
