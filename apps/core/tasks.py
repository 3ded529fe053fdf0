import socket

from celery import shared_task
from celery.signals import worker_ready
from django.db import OperationalError

from . import jobs


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=3300,
    time_limit=3600,
    # the database was briefly unavailable before the job could be marked: try again (job_run is idempotent)
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    max_retries=5,
)
def run_job(self, job_id: int):
    jobs.job_run(job_id, worker=self.request.hostname or socket.gethostname())


@shared_task(acks_late=True)
def jobs_reap_stale():
    return jobs.jobs_reap_stale()


@worker_ready.connect
def _recover_jobs_of_this_worker(sender, **kwargs):
    jobs.jobs_recover_worker(sender.hostname)
