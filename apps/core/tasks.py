import socket

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
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


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    # jobs registered with long=True (in-place encryption): above ENCRYPTION_COMMAND_TIMEOUT;
    # the broker's visibility timeout (CELERY_VISIBILITY_TIMEOUT) must exceed the hard limit
    soft_time_limit=settings.JOB_LONG_TIME_LIMIT - 300,
    time_limit=settings.JOB_LONG_TIME_LIMIT,
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    max_retries=5,
)
def run_long_job(self, job_id: int):
    jobs.job_run(job_id, worker=self.request.hostname or socket.gethostname())


@shared_task(acks_late=True)
def jobs_reap_stale():
    return jobs.jobs_reap_stale()


@worker_ready.connect
def _recover_jobs_of_this_worker(sender, **kwargs):
    jobs.jobs_recover_worker(sender.hostname)
