import logging

from celery import shared_task

from .services import storage_check as _storage_check

log = logging.getLogger(__name__)


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def storage_check():
    """Celery beat, every STORAGE_CHECK_INTERVAL seconds: measure, alert, act, sample."""
    report = _storage_check(actor=None)
    for line in report.unreadable:
        log.warning("storage check: host unreadable: %s", line)
    return {
        "vms": report.vms,
        "pools": report.pools,
        "raised": len(report.raised),
        "cleared": len(report.cleared) + len(report.eased),
        "unreadable": len(report.unreadable),
    }
