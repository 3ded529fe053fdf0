import csv

from django.core.paginator import Paginator
from django.http import HttpResponse

from apps.core.views_util import permission_required, render_page

from . import selectors
from .models import AuditEvent


@permission_required("audit.view")
def event_list(request):
    qs = selectors.events_filtered(request.user, request.GET)
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
    context = {"page": page, "filters": request.GET, "outcomes": AuditEvent.Outcome.values}
    return render_page(request, "audit/events.html", context, partial="table")


@permission_required("access_review.view")
def access_review(request):
    rows = selectors.access_review(request.user)
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="access-review.csv"'
        writer = csv.writer(response)
        writer.writerow(["user", "active", "roles", "last_login", "actions", "denied", "failed", "flags"])
        for r in rows:
            writer.writerow(
                [
                    r["user"].username,
                    r["user"].is_active,
                    "; ".join(f"{a.role} of {a.scope_label}" for a in r["assignments"]),
                    r["user"].last_login or "",
                    r["total"],
                    r["denied"],
                    r["failed"],
                    "; ".join(r["flags"]),
                ]
            )
        return response
    return render_page(request, "audit/access_review.html", {"rows": rows})
