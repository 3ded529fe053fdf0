"""Following a job from a management command: its log lines as they come, then its end."""

from __future__ import annotations

import time

from apps.core.models import Job


def follow_job(command, job: Job, *, no_wait: bool, timeout: float) -> str | None:
    """Write the job's log to the command's stdout until it ends (or not at all with no_wait).
    None when it succeeded or was not waited for, else what went wrong, in one sentence."""
    command.stdout.write(f"job {job.pk} {job.kind} {job.target_name} queued")
    if no_wait:
        return None
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        job.refresh_from_db()
        for line in job.log[seen:]:
            command.stdout.write(f"  {line['msg']}")
        seen = len(job.log)
        if job.finished:
            break
        time.sleep(0.5)
    else:
        return f"job {job.pk} is still {job.state}; follow it in the portal."
    if job.state != Job.State.SUCCEEDED:
        return f"job {job.pk} failed: {job.error}"
    command.stdout.write(command.style.SUCCESS(f"job {job.pk} succeeded {job.result}"))
    return None
