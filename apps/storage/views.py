"""Storage pages. Each view: check the page permission, look the object up for the user,
validate the input with its form (a refusal re-renders the form with its errors, audited),
call one service or selector, render a page or (HTMX) a partial."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.core.errors import InvalidInput, NotFound
from apps.core.models import Host
from apps.core.views_util import job_started, permission_required, render_page
from apps.vms.services import vm_for

from . import selectors, services
from .forms import (
    DefaultsForm,
    ExpandForm,
    PoolLimitForm,
    QuotaForm,
    VolumeCreateForm,
    VolumeResizeForm,
    error_text,
    refuse,
)
from .models import BreachAction


def _confirmed(request) -> bool:
    return request.POST.get("confirm") == "yes"


@permission_required("storage.view")
def pool_list(request):
    hosts, page = selectors.overview_page(request.user, request.GET.get("page"))
    context = {
        "hosts": hosts,
        "page": page,
        "open_alerts": selectors.alert_badge_count(request.user),
    }
    return render_page(request, "storage/pools.html", context, partial="overview")


@permission_required("storage.view")
def pool_detail(request, host: str, pool: str):
    detail = selectors.pool_detail(request.user, host, pool, request.GET.get("page"))
    return render_page(request, "storage/pool.html", {"d": detail, "page": detail.volumes}, partial="usage")


@require_POST
@permission_required("storage.settings")
def pool_limits(request, host: str, pool: str):
    host_obj = Host.objects.filter(name=host).first()
    if host_obj is None:
        raise NotFound(f"No host named {host!r}.")
    form = PoolLimitForm(request.POST)
    if not form.is_valid():
        target = ("pool", f"{host_obj.name}/{pool}", pool)
        refuse(form, actor=request.user, perm="storage.settings", obj=host_obj, action="storage.pool.limit",
               target=target)  # fmt: skip
        detail = selectors.pool_detail(request.user, host, pool)
        context = {"d": detail, "page": detail.volumes, "limit_form": form}
        return render_page(request, "storage/pool.html", context, status=400)
    services.pool_limit_set(actor=request.user, host=host_obj, pool=pool, **form.service_args())
    messages.success(request, f"Limits of pool {pool} saved.")
    return redirect("storage:pool", host, pool)


def _vm_page(request, vm, status=200, **forms):
    context = {"s": selectors.vm_storage(request.user, vm), "actions": BreachAction.choices, **forms}
    return render_page(request, "storage/vm.html", context, partial="quota", status=status)


@permission_required("storage.view")
def vm_storage(request, host: str, name: str):
    return _vm_page(request, vm_for(request.user, host, name))


@require_POST
@permission_required("storage.change")
def quota_set(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = QuotaForm(request.POST)
    if not form.is_valid():
        refuse(form, actor=request.user, perm="storage.change", target=vm, action="storage.quota.set")
        return _vm_page(request, vm, status=400, quota_form=form)
    services.quota_set(actor=request.user, vm=vm, **form.service_args())
    if request.htmx:
        return _vm_page(request, vm)
    messages.success(request, f"Quota of {vm.name} saved.")
    return redirect("storage:vm", host, name)


@require_POST
@permission_required("storage.change")
def quota_expand(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = ExpandForm(request.POST)
    if not form.is_valid():
        refuse(form, actor=request.user, perm="storage.change", target=vm, action="storage.quota.expand")
        return _vm_page(request, vm, status=400, expand_form=form)
    services.quota_expand(actor=request.user, vm=vm, **form.service_args())
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
    form = VolumeCreateForm(request.POST)
    if not form.is_valid():
        refuse(form, actor=request.user, perm="storage.change", target=vm, action="storage.volume.create")
        raise InvalidInput(error_text(form))
    job = services.volume_create(actor=request.user, vm=vm, **form.service_args())
    return _job_response(request, vm, job, "Creating the volume.")


@require_POST
@permission_required("storage.change")
def volume_resize(request, host: str, name: str, target: str):
    vm = vm_for(request.user, host, name)
    form = VolumeResizeForm(request.POST)
    if not form.is_valid():
        refuse(form, actor=request.user, perm="storage.change", target=vm, action="storage.volume.resize")
        raise InvalidInput(error_text(form))
    job = services.volume_resize(actor=request.user, vm=vm, target=target, **form.service_args())
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
    alerts = selectors.alerts_visible_to(request.user, open_only=not show_all)
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


def _settings_page(request, form=None, status=200):
    context = {"d": selectors.defaults_for(request.user), "actions": BreachAction.choices, "form": form}
    return render_page(request, "storage/settings.html", context, status=status)


@permission_required("storage.settings")
def settings_page(request):
    return _settings_page(request)


@require_POST
@permission_required("storage.settings")
def settings_save(request):
    form = DefaultsForm(request.POST)
    if not form.is_valid():
        target = ("storagedefaults", "1", "storage defaults")
        refuse(form, actor=request.user, perm="storage.settings", action="storage.settings.update", target=target)
        return _settings_page(request, form, status=400)
    services.defaults_update(actor=request.user, **form.service_args())
    messages.success(request, "Storage defaults saved.")
    return redirect("storage:settings")
