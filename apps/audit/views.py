from django.core.paginator import Paginator

from apps.core.views_util import permission_required, render_page

from . import selectors
from .models import AuditEvent


@permission_required("audit.view")
def event_list(request):
    qs = selectors.events_filtered(request.user, request.GET)
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
    context = {"page": page, "filters": request.GET, "outcomes": AuditEvent.Outcome.values}
    return render_page(request, "audit/events.html", context, partial="table")
