"""The Backups page: per VM its last good and last verified backup and the run in progress
(a polled progress bar), recent runs with restore and verify, repositories with prune.
Each view: the page permission, the object looked up for the user, a form, one service."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from apps.accounts.permissions import restrict
from apps.audit.services import refused
from apps.core.errors import NotFound
from apps.core.views_util import permission_required, render_page
from apps.vms.models import VirtualMachine

from . import selectors, services
from .forms import BackupNowForm, PolicyForm, PruneForm, RestoreForm, error_text, submitted
from .models import BackupPolicy, BackupRepository


def _context(request, **extra) -> dict:
    statuses = selectors.vm_statuses(request.user)
    runs = selectors.recent_runs(request.user)
    return {
        "statuses": statuses,
        "runs": runs,
        "repositories": selectors.repositories(),
        "policies": BackupPolicy.objects.all(),
        "selector_choices": BackupPolicy.Selector.choices,
        "polling": any(s.active for s in statuses),
        "interrupted": {r.pk for r in runs if selectors.interrupted(r)},
        **extra,
    }


def _answer(request, message: str, **extra):
    if request.htmx:
        messages.success(request, message)
        return render_page(request, "backups/index.html", _context(request, **extra), partial="status")
    messages.success(request, message)
    return redirect("backups:index")


def _invalid(request, form, *, action: str, target, obj=None):
    refused(actor=request.user, action=action, target=target, perm="backups.run", obj=obj,
            params=submitted(form), error=error_text(form))  # fmt: skip
    context = _context(request, form=form, form_action=action)
    return render_page(request, "backups/index.html", context, partial="status", status=400)


@permission_required("backups.view")
def index(request):
    return render_page(request, "backups/index.html", _context(request), partial="status")


@require_POST
@permission_required("backups.run")
def backup_now(request):
    form = BackupNowForm(request.POST)
    if not form.is_valid():
        return _invalid(request, form, action="backups.vm.backup.request", target=None)
    vm = restrict(VirtualMachine.objects.select_related("host"), request.user, "backups.view").filter(
        pk=form.cleaned_data["vm"], present=True
    ).first()
    if vm is None:
        raise NotFound("No such VM that you can see.")
    run = services.backup_start(actor=request.user, vm=vm, destination=form.cleaned_data["destination"])
    return _answer(request, f"Backup of {vm.name} queued (job {run.job_id}).")


@require_POST
@permission_required("backups.run")
def restore(request, pk: int):
    run = selectors.run_for(request.user, pk)
    form = RestoreForm(request.POST)
    if not form.is_valid():
        return _invalid(request, form, action="backups.vm.restore.request", target=run.vm or run.host)
    job = services.backup_restore(actor=request.user, run=run, new_name=form.cleaned_data["new_name"],
                                  pool=form.cleaned_data["pool"])  # fmt: skip
    return _answer(request, f"Restore of backup {run.pk} as {form.cleaned_data['new_name']} queued (job {job.pk}).")


@require_POST
@permission_required("backups.run")
def restore_in_place(request, pk: int):
    run = selectors.run_for(request.user, pk)
    job = services.backup_restore_in_place(actor=request.user, run=run, confirmed=request.POST.get("confirm") == "yes")
    kept = ", ".join(services.restore_in_place_kept(run, job.pk))
    return _answer(request, f"Restore of {run.vm_name} in place from backup {run.pk} queued (job {job.pk}). A copy "
                            f"of each disk before the restore is kept at {kept}: remove it when satisfied (to go "
                            "back, shut the VM off and rename it over the restored file).")  # fmt: skip


@require_POST
@permission_required("backups.run")
def verify(request, pk: int):
    run = selectors.run_for(request.user, pk)
    job = services.backup_verify(actor=request.user, run=run)
    return _answer(request, f"Verification of backup {run.pk} queued (job {job.pk}).")


@require_POST
@permission_required("backups.run")
def prune(request, pk: int):
    repository = BackupRepository.objects.filter(pk=pk).first()
    if repository is None:
        raise NotFound("No such backup repository.")
    form = PruneForm(request.POST)
    if not form.is_valid():
        return _invalid(request, form, action="backups.repository.prune.request", target=repository)
    keep = {k: form.cleaned_data[k] for k in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")}
    job = services.backup_prune(actor=request.user, repository=repository, **keep)
    return _answer(request, f"Retention of {repository.path} queued (job {job.pk}).")


@require_POST
@permission_required("backups.run")
def policy_create(request):
    form = PolicyForm(request.POST, creating=True)
    if not form.is_valid():
        return _invalid(request, form, action="backups.policy.create", target=None)
    policy = services.backup_policy_create(actor=request.user, name=form.cleaned_data["name"], **form.changes())
    return _answer(request, f"Backup policy {policy.name} created.")


@require_POST
@permission_required("backups.run")
def policy_update(request, pk: int):
    policy = BackupPolicy.objects.filter(pk=pk).first()
    if policy is None:
        raise NotFound("No such backup policy.")
    form = PolicyForm(request.POST)
    if not form.is_valid():
        return _invalid(request, form, action="backups.policy.update", target=policy)
    services.backup_policy_update(actor=request.user, policy=policy, **form.changes())
    return _answer(request, f"Backup policy {policy.name} saved.")
