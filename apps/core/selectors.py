from apps.accounts.permissions import scope_filter
from apps.vms.models import VirtualMachine

from .models import Job


def jobs_visible_to(user):
    """Jobs on VMs the user may see (all jobs for global roles)."""
    qs = Job.objects.select_related("host")
    allowed = scope_filter(user, "jobs.view")
    if allowed is None:
        return qs
    vm_ids = [str(pk) for pk in VirtualMachine.objects.filter(allowed).values_list("pk", flat=True)]
    return qs.filter(target_type="virtualmachine", target_id__in=vm_ids) | qs.filter(actor=user)
