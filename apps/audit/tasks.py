from celery import shared_task


@shared_task(acks_late=True, soft_time_limit=1800, time_limit=1860)
def audit_chain_verify():
    """Celery beat, every AUDIT_VERIFY_INTERVAL seconds: verify the chain from the checkpoint on."""
    from .chain import chain_check

    return chain_check()


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660, expires=300)
def audit_forward():
    """Celery beat, every AUDIT_SYSLOG_INTERVAL seconds: send the backlog to the SIEM."""
    from .forwarding import forward_pending

    return forward_pending()
