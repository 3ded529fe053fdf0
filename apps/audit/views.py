import json
from urllib.parse import urlencode

from django.http import StreamingHttpResponse
from django.utils import timezone

from apps.core.forms import error_text, refuse
from apps.core.views_util import permission_required, render_page

from . import exports, selectors
from .forms import EventFilterForm, sign_cursor
from .models import AuditEvent
from .redaction import redact


@permission_required("audit.view")
def event_list(request):
    """The log, newest first, a page at a time by an opaque cursor; the filters live in the
    query string. Invalid filters: the message, no rows (the refusal is audited)."""
    form = EventFilterForm(request.GET)
    context = {"form": form, "outcomes": AuditEvent.Outcome.values, "filters": request.GET}
    status = 200
    if form.is_valid():
        page = selectors.events_page(request.user, form.filters(), cursor=form.cleaned_data["cursor"],
                                     oldest=form.cleaned_data["end"] == "oldest", size=form.page_size)  # fmt: skip
        context.update(page=page, events=page.events, links=_page_links(form, page))
    else:
        refuse(form, actor=request.user, action="audit.events.view", perm="audit.view")
        context.update(events=[], error=error_text(form))
        status = 400
    return render_page(request, "audit/events.html", context, partial="table", status=status)


def _page_links(form: EventFilterForm, page: selectors.EventPage) -> dict[str, str | None]:
    """Query strings of the newest, newer, older and oldest pages of this filtered view."""
    base = form.link_params()
    away_from_newest = page.newer or form.cleaned_data["cursor"] or form.cleaned_data["end"]

    def link(**extra) -> str:
        return "?" + urlencode({**base, **extra})

    return {
        "newest": link() if away_from_newest else None,
        "newer": link(cursor=sign_cursor(page.newer)) if page.newer else None,
        "older": link(cursor=sign_cursor(page.older)) if page.older else None,
        "oldest": link(end="oldest") if page.older else None,
        "export_csv": "?" + urlencode({**base, "format": "csv"}),
        "export_jsonl": "?" + urlencode({**base, "format": "jsonl"}),
    }


@permission_required("audit.view")
def event_detail(request, pk: int):
    detail = selectors.event_detail(request.user, pk)
    params = json.dumps(redact(detail.event.params), indent=2, sort_keys=True)
    return render_page(request, "audit/event.html", {"d": detail, "e": detail.event, "params": params})


@permission_required("audit.view")
def event_export(request):
    """The filtered view (the page's query string) as CSV or JSON Lines, streamed."""
    form = EventFilterForm(request.GET)
    fmt = request.GET.get("format", "csv")
    if fmt not in exports.FORMATS:
        form.is_valid()
        form.add_error(None, "Export as csv or jsonl.")
    if not form.is_valid():
        refuse(form, actor=request.user, action=exports.EXPORT_ACTION, perm="audit.view")
        context = {"form": form, "outcomes": AuditEvent.Outcome.values, "filters": request.GET, "events": [],
                   "error": error_text(form)}  # fmt: skip
        return render_page(request, "audit/events.html", context, status=400)
    content_type, extension = exports.FORMATS[fmt]
    body = exports.events_export(actor=request.user, filters=form.filters(), fmt=fmt)
    response = StreamingHttpResponse(body, content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{extension}"'
    response["Cache-Control"] = "no-store"
    return response
