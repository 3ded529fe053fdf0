from celery import shared_task

from .services import retired_keys_destroy as _retired_keys_destroy
from .services.hook import definitions_protect as _definitions_protect


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def retired_keys_destroy():
    """Celery beat, hourly: destroy retired disk keys whose grace period is over."""
    return {"destroyed": _retired_keys_destroy(actor=None)}


@shared_task(acks_late=True, soft_time_limit=300, time_limit=360)
def definitions_protect():
    """Celery beat: no VM definition names a LUKS2 container; every such VM is known to the hook."""
    return {"repaired": _definitions_protect(actor=None)}
