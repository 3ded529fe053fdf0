from celery import shared_task

from . import services


@shared_task(acks_late=True, soft_time_limit=300, time_limit=330)
def dormant_accounts_disable():
    """Celery beat, hourly: the dormant-account policy (off unless ACCESS_DISABLE_DORMANT_DAYS > 0)."""
    return services.dormant_accounts_disable()
