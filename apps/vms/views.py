from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.accounts.permissions import has_perm
from apps.core.views_util import job_started, permission_required, render_page

from . import services


@permission_required("vms.view")
def vm_list(request):
    rows = services.inventory_for(request.user)
    return render_page(request, "vms/list.html", {"rows": rows}, partial="table")


@permission_required("vms.view")
def vm_detail(request, host: str, name: str):
    vm = services.vm_for(request.user, host, name)
    live, snapshots = services.vm_detail(actor=request.user, vm=vm)
    context = {
        "vm": vm,
        "live": live,
        "snapshots": snapshots,
        "actions": services.actions_for(live.state),
        "can_operate": has_perm(request.user, "vms.operate", vm),
        "can_snapshot": has_perm(request.user, "vms.snapshot", vm),
    }
    return render_page(request, "vms/detail.html", context, partial="summary")


def _job_response(request, vm, job, message):
    return job_started(request, job, message, reverse("vms:detail", args=[vm.host.name, vm.name]))


@require_POST
@permission_required("vms.operate")
def vm_action(request, host: str, name: str):
    vm = services.vm_for(request.user, host, name)
    action = request.POST.get("action", "")
    job = services.vm_lifecycle(
        actor=request.user, vm=vm, action=action, confirmed=request.POST.get("confirm") == "yes"
    )
    return _job_response(request, vm, job, f"{action.replace('_', ' ').capitalize()} of {vm.name} started.")


@require_POST
@permission_required("vms.snapshot")
def snapshot_create(request, host: str, name: str):
    vm = services.vm_for(request.user, host, name)
    job = services.snapshot_create(
        actor=request.user,
        vm=vm,
        name=request.POST.get("snapshot", "").strip(),
        description=request.POST.get("description", "").strip(),
    )
    return _job_response(request, vm, job, "Snapshot started.")


@require_POST
@permission_required("vms.snapshot")
def snapshot_delete(request, host: str, name: str, snapshot: str):
    vm = services.vm_for(request.user, host, name)
    job = services.snapshot_delete(
        actor=request.user, vm=vm, name=snapshot, confirmed=request.POST.get("confirm") == "yes"
    )
    return _job_response(request, vm, job, f"Deleting snapshot {snapshot}.")
