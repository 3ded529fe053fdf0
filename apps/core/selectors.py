from dataclasses import dataclass

from django.db.models import CharField, Q
from django.db.models.functions import Cast

from apps.accounts.permissions import has_perm, scope_filter
from apps.vms.models import VirtualMachine

from .models import Host, Job


def jobs_visible_to(user):
    """Jobs on VMs the user may see (all jobs for global roles)."""
    qs = Job.objects.select_related("host")
    allowed = scope_filter(user, "jobs.view")
    if allowed is None:
        return qs
    # a subquery (the VM ids as text, as Job keeps them), never thousands of ids in Python
    vm_ids = VirtualMachine.objects.filter(allowed).order_by().values(sid=Cast("pk", CharField()))
    return qs.filter(Q(target_type="virtualmachine", target_id__in=vm_ids) | Q(actor=user))


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

    return Dashboard(
        hosts=[h for h in Host.objects.only(*_HOST_SHOWN) if has_perm(user, "dashboard.view", h)],
        states=vm_state_counts(user),
        jobs=list(jobs_visible_to(user).select_related(None).only(*_JOB_SHOWN)[:8]),
        events=list(AuditEvent.objects.all()[:8]) if has_perm(user, "audit.view") else None,  # global only
    )
