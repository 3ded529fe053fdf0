from celery import shared_task

from .services import retired_keys_destroy as _retired_keys_destroy


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def retired_keys_destroy():
    """Celery beat, hourly: destroy retired disk keys whose grace period is over."""
    return {"destroyed": _retired_keys_destroy(actor=None)}
