from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404

from .selectors import dashboard_for, jobs_visible_to
from .views_util import permission_required, render_page


@permission_required("dashboard.view")
def dashboard(request):
    return render_page(request, "core/dashboard.html", {"d": dashboard_for(request.user)})


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
