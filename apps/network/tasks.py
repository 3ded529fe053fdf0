import logging

from celery import shared_task
from celery.signals import worker_ready

from apps.core.models import Host

from . import services

log = logging.getLogger(__name__)


@shared_task(acks_late=True, soft_time_limit=120, time_limit=180)
def firewall_rollback_due(apply_id: int):
    """Countdown task: roll an apply back if nobody confirmed it in time."""
    return services.firewall_rollback_due(apply_id)


@shared_task(acks_late=True, soft_time_limit=300, time_limit=360)
def firewall_check():
    """Celery beat: overdue rollbacks, then drift detection and repair, for every host
    whose firewall the portal manages (nft runs on this machine: the local hosts)."""
    out = []
    for host in Host.objects.filter(firewall_applies__isnull=False).distinct():
        r = services.firewall_check(host)
        out.append({"host": r.host, "rolled_back": r.rolled_back, "drift": r.drift})
    return out


@worker_ready.connect
def _restore_firewall(sender, **kwargs):
    """After a host reboot our tables are gone: the worker loads the last apply again."""
    for host in Host.objects.filter(firewall_applies__isnull=False).distinct():
        try:
            services.firewall_restore(host)
        except Exception:
            log.exception("could not restore the firewall of %s", host)
