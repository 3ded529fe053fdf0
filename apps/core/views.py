from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404

from apps.accounts.permissions import has_perm
from apps.audit.models import AuditEvent

from .models import Host
from .selectors import jobs_visible_to
from .views_util import permission_required, render_page


@permission_required("dashboard.view")
def dashboard(request):
    from apps.vms.selectors import vm_state_counts

    states = vm_state_counts(request.user)
    context = {
        "hosts": [h for h in Host.objects.all() if has_perm(request.user, "dashboard.view", h)],
        "vm_count": sum(n for _, n in states),
        "states": states,
        "jobs": jobs_visible_to(request.user)[:8],
        "events": AuditEvent.objects.all()[:8] if has_perm(request.user, "audit.view") else None,  # global only
    }
    return render_page(request, "core/dashboard.html", context)


@permission_required("jobs.view")
def job_list(request):
    page = Paginator(jobs_visible_to(request.user), 50).get_page(request.GET.get("page"))
    return render_page(request, "core/jobs.html", {"page": page}, partial="table")


@permission_required("jobs.view")
def job_detail(request, pk: int):
    job = get_object_or_404(jobs_visible_to(request.user), pk=pk)
    response = render_page(request, "core/job.html", {"job": job}, partial="progress")
    if request.htmx and job.finished:
        response["HX-Trigger"] = "job-finished"  # pages refresh what the job changed
    return response
