"""Storage pages. Each view: check the page permission, look the object up for the user,
call one service or selector, render a page or (HTMX) a partial."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.core.errors import NotFound
from apps.core.models import Host
from apps.core.views_util import job_started, permission_required, render_page
from apps.vms.services import vm_for

from . import selectors, services
from .models import BreachAction


def _confirmed(request) -> bool:
    return request.POST.get("confirm") == "yes"


def _version(request) -> int | None:
    value = request.POST.get("version", "")
    return int(value) if value.isdigit() else None


@permission_required("storage.view")
def pool_list(request):
    context = {
        "hosts": selectors.overview_for(request.user),
        "open_alerts": services.alert_badge_count(request.user),
    }
    return render_page(request, "storage/pools.html", context, partial="overview")


@permission_required("storage.view")
def pool_detail(request, host: str, pool: str):
    detail = selectors.pool_detail(request.user, host, pool)
    return render_page(request, "storage/pool.html", {"d": detail}, partial="usage")


@require_POST
@permission_required("storage.settings")
def pool_limits(request, host: str, pool: str):
    host_obj = Host.objects.filter(name=host).first()
    if host_obj is None:
        raise NotFound(f"No host named {host!r}.")
    services.pool_limit_set(
        actor=request.user,
        host=host_obj,
        pool=pool,
        max_overcommit=request.POST.get("max_overcommit", "").strip(),
        reserve_percent=request.POST.get("reserve_percent", "").strip(),
    )
    messages.success(request, f"Limits of pool {pool} saved.")
    return redirect("storage:pool", host, pool)


def _vm_page(request, vm, status=200):
    context = {"s": selectors.vm_storage(request.user, vm), "actions": BreachAction.choices}
    return render_page(request, "storage/vm.html", context, partial="quota", status=status)


@permission_required("storage.view")
def vm_storage(request, host: str, name: str):
    return _vm_page(request, vm_for(request.user, host, name))


@require_POST
@permission_required("storage.change")
def quota_set(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    services.quota_set(
        actor=request.user,
        vm=vm,
        limit_gib=request.POST.get("limit_gib", "").strip(),
        alert_percent=request.POST.get("alert_percent", "").strip(),
        breach_action=request.POST.get("breach_action", "").strip(),
        confirmed=_confirmed(request),
        expected_version=_version(request),
    )
    if request.htmx:
        return _vm_page(request, vm)
    messages.success(request, f"Quota of {vm.name} saved.")
    return redirect("storage:vm", host, name)


@require_POST
@permission_required("storage.change")
def quota_expand(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    services.quota_expand(actor=request.user, vm=vm, by_gib=request.POST.get("by_gib", "").strip())
    if request.htmx:
        return _vm_page(request, vm)
    messages.success(request, f"Quota of {vm.name} expanded.")
    return redirect("storage:vm", host, name)


def _job_response(request, vm, job, message):
    return job_started(request, job, message, reverse("storage:vm", args=[vm.host.name, vm.name]))


@require_POST
@permission_required("storage.change")
def volume_create(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    job = services.volume_create(
        actor=request.user,
        vm=vm,
        size_gib=request.POST.get("size_gib", "").strip(),
        name=request.POST.get("volume", "").strip(),
        pool=request.POST.get("pool", "").strip(),
    )
    return _job_response(request, vm, job, "Creating the volume.")


@require_POST
@permission_required("storage.change")
def volume_resize(request, host: str, name: str, target: str):
    vm = vm_for(request.user, host, name)
    job = services.volume_resize(actor=request.user, vm=vm, target=target, size_gib=request.POST.get("size_gib", ""))
    return _job_response(request, vm, job, f"Resizing {target}.")


@require_POST
@permission_required("storage.change")
def volume_delete(request, host: str, name: str, target: str):
    vm = vm_for(request.user, host, name)
    job = services.volume_delete(actor=request.user, vm=vm, target=target, confirmed=_confirmed(request))
    return _job_response(request, vm, job, f"Deleting {target}.")


@permission_required("storage.view")
def alert_list(request):
    show_all = request.GET.get("all") == "1"
    alerts = services.alerts_visible_to(request.user, open_only=not show_all)
    page = Paginator(alerts, 50).get_page(request.GET.get("page"))
    return render_page(request, "storage/alerts.html", {"page": page, "show_all": show_all}, partial="table")


@require_POST
@permission_required("storage.change")
def alert_acknowledge(request, pk: int):
    alert = services.alert_acknowledge(actor=request.user, alert_id=pk)
    if request.htmx:
        return render_page(request, "storage/alerts.html", {"alert": alert}, partial="row")
    messages.success(request, f"Alert on {alert.subject} acknowledged.")
    return redirect("storage:alerts")


@permission_required("storage.settings")
def settings_page(request):
    return render_page(
        request, "storage/settings.html", {"d": services.defaults_get(), "actions": BreachAction.choices}
    )


@require_POST
@permission_required("storage.settings")
def settings_save(request):
    p = request.POST
    services.defaults_update(
        actor=request.user,
        quota_gib=p.get("quota_gib", "").strip(),
        alert_percent=p.get("alert_percent", "").strip(),
        breach_action=p.get("breach_action", "").strip(),
        max_overcommit=p.get("max_overcommit", "").strip(),
        reserve_percent=p.get("reserve_percent", "").strip(),
        expected_version=_version(request),
    )
    messages.success(request, "Storage defaults saved.")
    return redirect("storage:settings")
