from dataclasses import dataclass

from django.db.models import CharField, Q
from django.db.models.functions import Cast

from apps.accounts.permissions import has_perm, scope_parts, scope_q
from apps.core.prepared import Prepared
from apps.vms.models import VirtualMachine

from .models import Host, Job


def _jobs_in_scope(kinds, p):
    """Jobs on the VMs of these scopes and the user's own (`scope_parts`; p["user"]), all for None."""
    if kinds is None:
        return Job.objects.all()
    # a subquery (the VM ids as text, as Job keeps them), never thousands of ids in Python
    vm_ids = VirtualMachine.objects.filter(scope_q(kinds, p)).order_by().values(sid=Cast("pk", CharField()))
    return Job.objects.filter(Q(target_type="virtualmachine", target_id__in=vm_ids) | Q(actor_id=p["user"]))


def _job_lines(shape, p):
    return _jobs_in_scope(shape, p).values("id", *_JOB_SHOWN)


def _host_lines(shape, p):
    return Host.objects.values("id", *_HOST_SHOWN)


def _scope_with_user(user, perm: str) -> tuple[tuple | None, dict]:
    kinds, values = scope_parts(user, perm)
    if kinds is not None:
        values["user"] = user.pk
    return kinds, values


def jobs_visible_to(user):
    """Jobs on VMs the user may see (all jobs for global roles)."""
    return _jobs_in_scope(*_scope_with_user(user, "jobs.view")).select_related("host")


_HOST_READ = Prepared(Host, _host_lines)
_JOB_READ = Prepared(Job, _job_lines)


@dataclass(frozen=True)
class Dashboard:
    hosts: list[Host]
    states: list[tuple[str, int]]  # (VM state, how many) of the VMs the user sees
    jobs: list[Job]
    events: list | None  # recent audit events, None unless the user may read the audit log

    @property
    def vm_count(self) -> int:
        return sum(n for _, n in self.states)


# what a host's line shows: its name, address and how fresh its picture is
_HOST_SHOWN = ("name", "uri", "collected_at", "unreachable_since", "collect_error", "security_models")
# what a job's progress line shows (not its log, result or parameters)
_JOB_SHOWN = ("kind", "state", "target_name", "actor_name", "created_at", "progress", "error")


def dashboard_for(user) -> Dashboard:
    """What the dashboard shows, from the database: a constant number of queries."""
    from apps.audit.models import AuditEvent
    from apps.vms.selectors import vm_state_counts

    hosts = _HOST_READ.objects((), {})
    return Dashboard(
        hosts=[h for h in hosts if has_perm(user, "dashboard.view", h)],
        states=vm_state_counts(user),
        jobs=_JOB_READ.objects(*_scope_with_user(user, "jobs.view"), limit=8),
        events=list(AuditEvent.objects.all()[:8]) if has_perm(user, "audit.view") else None,  # global only
    )
