"""Network pages: zones, firewall rules with counters, apply (diff, confirm, rollback) and
quarantine. Each view checks the page permission, looks the object up for the user,
validates input with its form (a refusal is audited and re-rendered), calls one service."""

from django.contrib import messages
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.audit.services import refused
from apps.core.errors import InvalidInput, NotFound
from apps.core.views_util import job_started, permission_required, render_page
from apps.vms.services import vm_for

from . import selectors, services
from .forms import QuarantineForm, ReleaseForm, RuleForm, ZoneEditForm, ZoneForm, ZoneMoveForm, errors_text
from .models import FirewallRule


def _params(form) -> dict:
    return {"input": {k: str(v)[:100] for k, v in form.data.items() if k != "csrfmiddlewaretoken"}}


@permission_required("network.view")
def network_list(request):
    context = {
        "hosts": services.networks_for(request.user),
        "zones": selectors.zones_visible_to(request.user),
        "quarantined": selectors.quarantined(request.user),
        "zone_form": ZoneForm(),
    }
    return render_page(request, "network/networks.html", context)


@require_POST
@permission_required("network.zones")
def zone_create(request, host: str):
    host_obj = selectors.host_named(host)
    form = ZoneForm(request.POST)
    if not form.is_valid():
        target = ("zone", "", request.POST.get("name", "")[:100])
        refused(actor=request.user, action="network.zone.create", target=target, obj=host_obj,
                perm="network.zones", params=_params(form), error=errors_text(form))
        context = {"hosts": services.networks_for(request.user), "zones": selectors.zones_visible_to(request.user),
                   "quarantined": selectors.quarantined(request.user), "zone_form": form}  # fmt: skip
        return render_page(request, "network/networks.html", context, status=400)
    zone, job = services.zone_create(actor=request.user, host=host_obj, **form.cleaned_data)
    return job_started(request, job, f"Zone {zone.name} created; its network is being defined.",
                       f"/network/zones/{host_obj.name}/{zone.name}/")  # fmt: skip


def _rules_changed(response):
    response["HX-Trigger"] = "rules-changed"  # the rule table (and its counters) reloads
    return response


def _zone_page(request, zone, status=200, partial="rules", **forms):
    counters = _counters(request, zone.host)
    context = {"zone": zone, "rules": selectors.zone_rules(zone), "vms": selectors.zone_vm_names(zone),
               "counters": counters, "rule_form": forms.get("rule_form") or RuleForm(),
               "edit_form": forms.get("edit_form") or ZoneEditForm(initial={
                   "description": zone.description, "policy_in": zone.policy_in, "policy_out": zone.policy_out,
                   "host_access": zone.host_access, "uplink": zone.uplink, "nat": zone.nat,
                   "host_services": zone.host_services})}  # fmt: skip
    return render_page(request, "network/zone.html", context, partial=partial, status=status)


def _counters(request, host) -> dict:
    try:
        return services.firewall_counters(actor=request.user, host=host)
    except Exception:  # counters are a nicety: a page without them beats no page
        return {}


@permission_required("network.view")
def zone_detail(request, host: str, zone: str):
    return _zone_page(request, selectors.zone_for(request.user, host, zone))


@require_POST
@permission_required("network.zones")
def zone_edit(request, host: str, zone: str):
    z = selectors.zone_for(request.user, host, zone)
    form = ZoneEditForm(request.POST)
    if not form.is_valid():
        refused(actor=request.user, action="network.zone.edit", target=z, obj=z.host, perm="network.zones",
                params=_params(form), error=errors_text(form))  # fmt: skip
        return _zone_page(request, z, status=400, edit_form=form)
    services.zone_edit(actor=request.user, zone=z, **form.cleaned_data)
    messages.success(request, f"Zone {z.name} saved: apply the firewall to enforce it.")
    return redirect("network:zone", host, zone)


@require_POST
@permission_required("network.zones")
def zone_delete(request, host: str, zone: str):
    z = selectors.zone_for(request.user, host, zone)
    job = services.zone_delete(actor=request.user, zone=z, confirmed=request.POST.get("confirm") == "yes")
    return job_started(request, job, f"Zone {zone} deleted; its network is being removed.", "/network/")


@require_POST
@permission_required("network.change")
def zone_rule_add(request, host: str, zone: str):
    z = selectors.zone_for(request.user, host, zone)
    form = RuleForm(request.POST, host=z.host)
    if not form.is_valid():
        refused(actor=request.user, action="network.rule.add", target=z, perm="network.change", params=_params(form),
                error=errors_text(form))  # fmt: skip
        return _zone_page(request, z, status=400, partial="ruleform", rule_form=form)
    _add(request, zone=z, data=form.cleaned_data)
    return _rules_changed(_zone_page(request, z, partial="ruleform")) if request.htmx else redirect(
        "network:zone", host, zone)  # fmt: skip


def _add(request, *, data, vm=None, zone=None):
    return services.rule_add(actor=request.user, vm=vm, zone=zone, direction=data["direction"],
                             protocol=data["protocol"], action=data["action"], ports=data["ports"],
                             remote_cidr=data["remote"], remote_zone=data["remote_zone"], comment=data["comment"],
                             position=data["position"])  # fmt: skip


def _vm_page(request, vm, status=200, partial="rules", **forms):
    context = {"vm": vm, "rules": selectors.vm_rules(vm),
               "host_zones": selectors.zones_visible_to(request.user, vm.host), "net": selectors.vm_network(vm),
               "counters": _counters(request, vm.host), "rule_form": forms.get("rule_form") or RuleForm(),
               "release_form": forms.get("release_form") or ReleaseForm(),
               "quarantine_form": forms.get("quarantine_form") or QuarantineForm(),
               "quarantine_job": selectors.quarantine_job(vm)}  # fmt: skip
    return render_page(request, "network/vm.html", context, partial=partial, status=status)


@permission_required("network.view")
def vm_firewall(request, host: str, name: str):
    return _vm_page(request, vm_for(request.user, host, name))


@require_POST
@permission_required("network.change")
def vm_rule_add(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = RuleForm(request.POST, host=vm.host)
    if not form.is_valid():
        refused(actor=request.user, action="network.rule.add", target=vm, perm="network.change",
                params=_params(form), error=errors_text(form))  # fmt: skip
        return _vm_page(request, vm, status=400, partial="ruleform", rule_form=form)
    _add(request, vm=vm, data=form.cleaned_data)
    return _rules_changed(_vm_page(request, vm, partial="ruleform")) if request.htmx else redirect(
        "network:vm", host, name)  # fmt: skip


@require_POST
@permission_required("network.change")
def vm_move(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = ZoneMoveForm(request.POST)
    if not form.is_valid():
        refused(actor=request.user, action="network.vm.move", target=vm, perm="network.change",
                params=_params(form), error=errors_text(form))  # fmt: skip
        raise InvalidInput(errors_text(form))
    zone = selectors.zone_for(request.user, host, form.cleaned_data["zone"])
    applies = services.vm_zone_move(actor=request.user, vm=vm, zone=zone)
    messages.success(request, f"{vm.name} moved to zone {zone.name}{services.MOVE_MESSAGES[applies]}")
    return redirect("network:vm", host, name)


@require_POST
@permission_required("network.change")
def rule_delete(request, pk: int):
    rule = FirewallRule.objects.select_related("vm", "vm__host", "zone", "zone__host").filter(pk=pk).first()
    if rule is None:
        raise NotFound(f"No firewall rule #{pk}.")
    if rule.vm_id:
        vm_for(request.user, rule.vm.host.name, rule.vm.name)  # 404 outside the user's scope
        back = ("network:vm", rule.vm.host.name, rule.vm.name)
    else:
        selectors.zone_for(request.user, rule.zone.host.name, rule.zone.name)
        back = ("network:zone", rule.zone.host.name, rule.zone.name)
    services.rule_delete(actor=request.user, rule_id=pk)
    messages.success(request, f"Rule #{pk} deleted: apply the firewall to enforce it.")
    return redirect(*back)


@permission_required("network.view")
def firewall_page(request, host: str):
    host_obj = selectors.host_named(host)
    preview = services.firewall_preview(actor=request.user, host=host_obj)
    context = {"host": host_obj, "preview": preview, "pending": selectors.pending_apply(host_obj),
               "applies": selectors.applies(host_obj)}  # fmt: skip
    return render_page(request, "network/firewall.html", context, partial="status")


@require_POST
@permission_required("network.change")
def firewall_apply(request, host: str):
    host_obj = selectors.host_named(host)
    apply = services.firewall_apply(actor=request.user, host=host_obj)
    messages.warning(request, f"Apply #{apply.pk} is running: confirm it before {apply.deadline:%H:%M:%S} "
                              "or it rolls back.")  # fmt: skip
    return redirect("network:firewall", host)


@require_POST
@permission_required("network.change")
def firewall_confirm(request, host: str, pk: int):
    host_obj = selectors.host_named(host)
    services.firewall_confirm(actor=request.user, host=host_obj, apply_id=pk)
    messages.success(request, f"Apply #{pk} confirmed.")
    return redirect("network:firewall", host)


@require_POST
@permission_required("network.change")
def vm_quarantine(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = QuarantineForm(request.POST)
    if not form.is_valid():
        refused(actor=request.user, action="network.vm.quarantine", target=vm, perm="network.change",
                params=_params(form), error=errors_text(form))  # fmt: skip
        return _vm_page(request, vm, status=400, quarantine_form=form)
    job = services.vm_quarantine(actor=request.user, vm=vm, reason=form.cleaned_data["reason"])
    return job_started(request, job, f"Quarantine of {vm.name} started ({job.params['incident']}).",
                       back=reverse("network:vm", args=[host, name]))  # fmt: skip


@require_POST
@permission_required("network.change")
def vm_release(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = ReleaseForm(request.POST)
    if not form.is_valid():
        refused(actor=request.user, action="network.vm.release", target=vm, perm="network.change",
                params=_params(form), error=errors_text(form))  # fmt: skip
        return _vm_page(request, vm, status=400, release_form=form)
    q = services.vm_release(actor=request.user, vm=vm, reason=form.cleaned_data["reason"])
    failed = [s["step"] for s in q.steps if s["step"].startswith("release") and not s["ok"]]
    (messages.error if failed else messages.success)(
        request, f"{vm.name} released" + (f"; these steps failed: {', '.join(failed)}" if failed else "."))
    return redirect("network:vm", host, name)
