"""Jobs: long actions run by Celery workers, with progress, audit and crash recovery.

A service enqueues a job with `job_enqueue`; the Celery task calls `job_run(job_id)`, which
looks up the handler registered for the job's kind. The handler is a service function; it
gets the job and a `progress(percent, message)` callback. `job_run` records the outcome in
the audit log under the job's kind, so every job ends in exactly one success or failure
event. Handlers must be idempotent: a job whose worker died is delivered again (acks_late).

A handler that blocks for long in one call (an in-place encryption runs cryptsetup for
hours) wraps it in `heartbeat(job)`, so the stale-job reaper does not take it for lost, and
is registered with `long=True`, so it runs in the task whose time limits
(settings.JOB_LONG_TIME_LIMIT) are above the command's own timeout.

A job runs as the user who asked for it; it runs as the system only when a command asked
for it without a user (actor_name "system"). A job whose user was deleted or disabled since
is denied, and every handler checks its permission again for the job's actor when it runs
(`authorize(job_actor(job), ...)`), reading the roles as they are then: a role revoked while
the job waited in the queue refuses it (denied, audited).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import connections, transaction
from django.utils import timezone

from apps.audit import context as audit_context
from apps.audit.services import record

from .errors import PortalError
from .models import Job

log = logging.getLogger(__name__)

Progress = Callable[[int, str], None]
Handler = Callable[[Job, Progress], dict | None]
_HANDLERS: dict[str, Handler] = {}
_LONG_KINDS: set[str] = set()
_LOST_HINTS: dict[str, str] = {}
_ON_LOST: dict[str, Callable[[Job], None]] = {}
SYSTEM_ACTOR = "system"


def handler(kind: str, *, long: bool = False, lost_hint: str = "", on_lost: Callable[[Job], None] | None = None):
    """Register the function that does the work of jobs of this kind. long=True: the job may
    block for hours (it must keep its heartbeat with `heartbeat`) and runs in the task with
    the long time limits. `lost_hint` tells the operator what to do when the job's worker
    was lost (e.g. how to resume); it ends the job's error. `on_lost(job)` puts right what
    a lost job may have left half done, once the job is marked failed (by the worker that
    starts again or the stale-job reaper); it records what it did itself."""

    def register(fn: Handler) -> Handler:
        _HANDLERS[kind] = fn
        _LOST_HINTS[kind] = lost_hint
        if on_lost is not None:
            _ON_LOST[kind] = on_lost
        else:
            _ON_LOST.pop(kind, None)
        if long:
            _LONG_KINDS.add(kind)
        else:
            _LONG_KINDS.discard(kind)
        return fn

    return register


def is_long(kind: str) -> bool:
    return kind in _LONG_KINDS


def job_actor(job: Job):
    """The user the job acts for, or None for the system (a job a command asked for without
    a user). A job whose user was deleted since is not the system: PermissionDenied."""
    if job.actor_id is not None:
        actor = job.actor
        if not actor.is_active:  # disabled since it asked: the job is refused, never run
            raise PermissionDenied(f"The user {job.actor_name!r} who asked for this job was disabled; it was not run.")
        return actor
    if job.actor_name == SYSTEM_ACTOR:
        return None
    raise PermissionDenied(f"The user {job.actor_name!r} who asked for this job no longer exists; the job was not run.")


def job_enqueue(*, actor, kind: str, target, host=None, params: dict | None = None) -> Job:
    """Create a queued job and send it to the workers once the transaction commits."""
    if kind not in _HANDLERS:
        raise ValueError(f"no handler registered for job kind {kind!r}")
    job = Job.objects.create(
        kind=kind,
        host=host,
        target_type=target._meta.model_name,
        target_id=str(target.pk),
        target_name=str(target),
        params=params or {},
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        actor_name=SYSTEM_ACTOR if actor is None else (getattr(actor, "username", "") or "anonymous"),
        source_ip=audit_context.source_ip.get(),
        request_id=audit_context.request_id.get(),
    )
    record(actor=actor, action=kind, target=target, outcome="requested", params=params, job=job)
    transaction.on_commit(lambda: _send(job.pk))
    return job


def task_for(kind: str):
    """The Celery task that runs jobs of this kind: long jobs get the long time limits."""
    from .tasks import run_job, run_long_job

    return run_long_job if is_long(kind) else run_job


def _send(job_id: int) -> None:
    kind = Job.objects.filter(pk=job_id).values_list("kind", flat=True).first() or ""
    result = task_for(kind).apply_async(args=[job_id])
    Job.objects.filter(pk=job_id, celery_task_id="").update(celery_task_id=result.id or "")


def _progress_callback(job: Job) -> Progress:
    def progress(percent: int, message: str = "") -> None:
        percent = max(0, min(100, int(percent)))
        job.progress = percent
        if message:
            job.log = [*job.log, {"at": timezone.now().isoformat(timespec="seconds"), "msg": message}][-200:]
        job.heartbeat_at = timezone.now()
        Job.objects.filter(pk=job.pk).update(progress=percent, log=job.log, heartbeat_at=job.heartbeat_at)

    return progress


@contextmanager
def heartbeat(job: Job, *, every: float | None = None) -> Iterator[None]:
    """Keep the job's heartbeat moving while the handler blocks in one long call: a daemon
    thread updates Job.heartbeat_at every `every` seconds (default: a minute, or a third of
    JOB_STALE_SECONDS if less), with its own database connection, which it closes when the
    block ends."""
    every = every or max(1, min(60, settings.JOB_STALE_SECONDS / 3))
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(every):
                try:
                    Job.objects.filter(pk=job.pk, state=Job.State.RUNNING).update(heartbeat_at=timezone.now())
                except Exception:  # a missed beat is not worth ending the job for
                    log.warning("job %s: heartbeat update failed", job.pk, exc_info=True)
        finally:
            connections.close_all()  # this thread's connections only

    thread = threading.Thread(target=beat, name=f"job-{job.pk}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def job_run(job_id: int, *, worker: str = "") -> Job | None:
    """Run one job. Safe to call again for the same job: a finished job is left alone and
    a job that was running when its worker died is run again (handlers are idempotent)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.finished:
            return job
        now = timezone.now()
        job.state = Job.State.RUNNING
        job.attempts += 1
        job.worker = worker
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        job.save(update_fields=["state", "attempts", "worker", "started_at", "heartbeat_at"])
    work = _HANDLERS.get(job.kind)
    with audit_context.bound(job.source_ip, job.request_id):
        progress = _progress_callback(job)
        progress(job.progress, f"started on {worker or 'worker'} (attempt {job.attempts})")
        try:
            if work is None:
                raise PortalError(f"This portal version cannot run jobs of kind {job.kind}.")
            job_actor(job)  # a job whose user was deleted is denied, never run as the system
            result = work(job, progress) or {}
        except PermissionDenied as exc:
            _finish(job, Job.State.FAILED, error=str(exc), outcome="denied")
        except PortalError as exc:
            _finish(job, Job.State.FAILED, error=exc.message)
        except Exception as exc:  # an unexpected bug must still end the job, not leave it running
            log.exception("job %s (%s) crashed", job.pk, job.kind)
            _finish(job, Job.State.FAILED, error=f"Internal error ({type(exc).__name__}); see the worker log.")
        else:
            progress(100, "finished")
            _finish(job, Job.State.SUCCEEDED, result=result)
    return job


def _finish(job: Job, state: str, *, result: dict | None = None, error: str = "", outcome: str | None = None):
    with transaction.atomic():
        job.state = state
        job.result = result or {}
        job.error = error
        job.finished_at = timezone.now()
        job.save(update_fields=["state", "result", "error", "finished_at", "progress", "log"])
        if job.actor_id is not None:
            actor = job.actor
        else:
            actor = None
        record(
            actor=actor,
            actor_name=job.actor_name,
            action=job.kind,
            target=(job.target_type, job.target_id, job.target_name),
            outcome=outcome or ("success" if state == Job.State.SUCCEEDED else "failed"),
            params=job.params,
            error=error,
            job=job,
        )


def job_fail_lost(job: Job, reason: str) -> None:
    """Mark a job whose worker vanished as failed (never leave it 'running')."""
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.finished:
            return
        if _LOST_HINTS.get(locked.kind):
            reason = f"{reason} {_LOST_HINTS[locked.kind]}"
        locked.log = [*locked.log, {"at": timezone.now().isoformat(timespec="seconds"), "msg": reason}]
        _finish(locked, Job.State.FAILED, error=reason)
    clean_up = _ON_LOST.get(locked.kind)
    if clean_up is not None:  # outside the row lock: it may call libvirt
        try:
            clean_up(locked)
        except Exception:  # the job is failed either way; its hint says what to check
            log.exception("clean-up after the lost job %s failed", locked.pk)


def jobs_reap_stale(now=None) -> int:
    """Fail running jobs whose worker stopped reporting (killed, machine lost)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.JOB_STALE_SECONDS)
    stale = Job.objects.filter(state=Job.State.RUNNING, heartbeat_at__lt=cutoff)
    count = 0
    for job in stale:
        job_fail_lost(
            job,
            "The worker running this job stopped reporting; the job was marked failed. "
            "Check the target's state before retrying.",
        )
        count += 1
    return count


def jobs_recover_worker(worker: str) -> int:
    """Called when a worker starts: jobs it was running when it died are marked failed."""
    count = 0
    for job in Job.objects.filter(state=Job.State.RUNNING, worker=worker):
        job_fail_lost(
            job,
            f"The worker {worker} restarted while running this job; the job was marked failed. "
            "Check the target's state before retrying.",
        )
        count += 1
    return count
