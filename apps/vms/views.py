from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.accounts.permissions import authorize
from apps.core.errors import Conflict
from apps.core.forms import validated
from apps.core.middleware import CSP
from apps.core.views_util import job_started, permission_required, render_page

from . import console, history, selectors, services
from .forms import LifecycleForm, SnapshotCreateForm, SnapshotDeleteForm
from .security import host_confinement, vm_security_summary


@permission_required("vms.view")
def vm_list(request):
    filters = selectors.VmFilters.from_query(request.GET)
    since = request.GET.get("since") if request.htmx else None
    listing = selectors.vm_listing(request.user, filters, request.GET.get("page"), since=since)
    if listing.page is None:
        return HttpResponse(status=204)  # nothing changed since the open page was drawn: htmx keeps it
    page = listing.page
    query = filters.as_query()
    context = {
        "page": page,
        "filters": query,
        "current": filters,
        "columns": _sort_columns(filters, query),
        "states": selectors.STATES,
        "poll_query": urlencode({**query, "page": page.number, "since": listing.version}),
        "stale_hosts": listing.stale_hosts,
    }
    return render_page(request, "vms/list.html", context, partial="table")


_COLUMNS = [("Name", "name"), ("Host", "host"), ("Zone", "zone"), ("State", "state"), ("vCPUs", None),
            ("Memory", "memory"), ("Disks (allocated / capacity)", "disk")]  # fmt: skip


def _sort_columns(filters, query: dict) -> list[tuple[str, str, str]]:
    """(label, query string that sorts by it, arrow if sorted by it) per column."""
    columns = []
    for label, key in _COLUMNS:
        if key is None:
            columns.append((label, "", ""))
            continue
        current = filters.sort == key
        sort = f"-{key}" if current and not filters.descending else key
        arrow = ("\u2193" if filters.descending else "\u2191") if current else ""
        columns.append((label, urlencode({**query, "sort": sort}), arrow))
    return columns


@permission_required("vms.view")
def vm_detail(request, host: str, name: str):
    vm = services.vm_for(request.user, host, name)
    live, snapshots = services.vm_detail(actor=request.user, vm=vm)
    context = {
        "vm": vm,
        "live": live,
        "snapshots": snapshots,
        "interfaces": selectors.vm_interfaces(request.user, vm),
        "actions": services.actions_for(live.state),
        "security": vm_security_summary(vm),
        "host_confinement": host_confinement(vm.host.security_models),
    }
    return render_page(request, "vms/detail.html", context, partial="summary")


@permission_required("vms.view")
def vm_history(request, host: str, name: str):
    """The History tab: the VM's audit events and configuration revisions, newest first."""
    vm = services.vm_for(request.user, host, name)
    context = {"vm": vm, "tab": "history", **history.vm_history(actor=request.user, vm=vm)}
    return render_page(request, "vms/history.html", context)


@permission_required("vms.view")
def vm_revision(request, host: str, name: str, revision: int):
    """One revision beside the one before it (a two-column diff of the definitions)."""
    vm = services.vm_for(request.user, host, name)
    rev, before = history.revision_get(actor=request.user, vm=vm, revision_id=revision)
    rows = history.side_by_side(before.xml if before else "", rev.xml)
    context = {"vm": vm, "tab": "history", "revision": rev, "before": before, "rows": rows}
    return render_page(request, "vms/revision.html", context)


def _job_response(request, vm, job, message):
    return job_started(request, job, message, reverse("vms:detail", args=[vm.host.name, vm.name]))


@require_POST
@permission_required("vms.operate")
def vm_action(request, host: str, name: str):
    vm = services.vm_for(request.user, host, name)
    form = validated(LifecycleForm(request.POST), actor=request.user, action="vms.vm.action", target=vm,
                     perm="vms.operate")  # fmt: skip
    action = form.cleaned_data["action"]
    job = services.vm_lifecycle(actor=request.user, vm=vm, action=action, confirmed=form.cleaned_data["confirm"])
    return _job_response(request, vm, job, f"{action.replace('_', ' ').capitalize()} of {vm.name} started.")


@require_POST
@permission_required("vms.snapshot")
def snapshot_create(request, host: str, name: str):
    vm = services.vm_for(request.user, host, name)
    form = validated(SnapshotCreateForm(request.POST), actor=request.user, action="vms.snapshot.create", target=vm,
                     perm="vms.snapshot")  # fmt: skip
    job = services.snapshot_create(
        actor=request.user, vm=vm, name=form.cleaned_data["snapshot"], description=form.cleaned_data["description"]
    )
    return _job_response(request, vm, job, "Snapshot started.")


@require_POST
@permission_required("vms.snapshot")
def snapshot_delete(request, host: str, name: str, snapshot: str):
    vm = services.vm_for(request.user, host, name)
    form = validated(SnapshotDeleteForm(request.POST), actor=request.user, action="vms.snapshot.delete", target=vm,
                     perm="vms.snapshot")  # fmt: skip
    job = services.snapshot_delete(actor=request.user, vm=vm, name=snapshot, confirmed=form.cleaned_data["confirm"])
    return _job_response(request, vm, job, f"Deleting snapshot {snapshot}.")


def _console_url(request) -> str:
    """The websocket URL of the console proxy as the browser reaches it."""
    if settings.CONSOLE_PUBLIC_URL:
        return settings.CONSOLE_PUBLIC_URL
    host = request.get_host().rsplit(":", 1)[0] if not request.get_host().endswith("]") else request.get_host()
    return f"ws://{host}:{settings.CONSOLE_PROXY_PORT}/console"


@permission_required("vms.operate")
def vm_console(request, host: str, name: str):
    """The console page: noVNC (vendored) asks for a token, then connects to the proxy."""
    vm = services.vm_for(request.user, host, name)
    authorize(request.user, "vms.operate", vm, action="vms.console.open")
    try:
        console.console_socket(vm)
        unavailable = ""
    except Conflict as exc:
        unavailable = exc.message
    response = render_page(request, "vms/console.html", {"vm": vm, "unavailable": unavailable})
    ws = _console_url(request)
    origin = ws.split("/console", 1)[0]
    response["Content-Security-Policy"] = CSP.replace("connect-src 'self'", f"connect-src 'self' {origin}")
    return response


@require_POST
@permission_required("vms.operate")
def vm_console_token(request, host: str, name: str):
    """A one-time token for one console session (audited as vms.console.open)."""
    vm = services.vm_for(request.user, host, name)
    token = console.console_open(actor=request.user, vm=vm, source_ip=request.META.get("REMOTE_ADDR"))
    return JsonResponse({"url": f"{_console_url(request)}?token={token}"})
