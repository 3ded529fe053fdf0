from celery import shared_task

from . import services


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def posture_check():
    """Celery beat, every POSTURE_CHECK_INTERVAL seconds: the host security checklist."""
    report = services.posture_check()
    return {"counts": report.counts, "changed": len(report.changed), "raised": report.raised}


@shared_task(ignore_result=True, expires=55)
def worker_heartbeat():
    """Celery beat, every minute: proves a worker takes work (portal_worker_heartbeat_timestamp_seconds)."""
    return services.worker_heartbeat()


@shared_task(acks_late=True, soft_time_limit=300, time_limit=330)
def notification_deliver(channel: str, payload: dict):
    """One notice on one channel, with its retries (apps.monitoring.notifications)."""
    from .notifications import deliver

    return deliver(channel, payload)
