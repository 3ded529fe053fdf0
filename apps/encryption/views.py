"""Encryption pages. Thin: check the page permission (decorator; services check again
against the object), look the object up for the user, validate the input with its form
(apps/encryption/forms.py: a refusal re-renders the page, or for HTMX its form's partial,
with the errors, and is audited with `refused`), call one service with typed values,
render a partial or redirect. Sensitive actions (key change, escrow export, recovery test,
unseal, seal, KEK rotation) need a recent re-authentication (listed in
apps.accounts.reauth.REAUTH_POLICY); destructive ones a confirmation."""

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.audit.services import refused
from apps.core.errors import InvalidInput
from apps.core.models import Host
from apps.core.views_util import job_started, permission_required, render_page
from apps.vms.services import vm_for

from . import forms, selectors, services


def _refused(request, form, *, action: str, target=None, perm: str | None = None) -> None:
    """Audit what the form refused, after the permission check the service would make."""
    refused(
        actor=request.user,
        action=action,
        target=target,
        params=form.submitted(),
        error=form.error_text(),
        perm=perm if target is not None else None,
    )


def _invalid(request, template: str, context: dict, *, partial: str | None = None, element: str = ""):
    """The page again with the form's errors (400); for HTMX only the form's partial, swapped
    in place of the form (`element`: its id)."""
    response = render_page(request, template, context, partial=partial, status=400)
    if request.htmx and partial and element:
        response["HX-Retarget"] = f"#{element}"
        response["HX-Reswap"] = "outerHTML"
    return response


def _vm_named(request, value: str):
    """The VM named "host/name" by a form, if the user may see it."""
    host, _, name = value.partition("/")
    return vm_for(request.user, host, name)


def _index_context(request, **forms_in_use) -> dict:
    return {
        "rows": services.disks_list(actor=request.user),
        "store": services.store_status(actor=request.user),
        "kinds": services.EncryptedDisk.Kind.choices,
        "max_age_days": settings.ENCRYPTION_KEY_MAX_AGE_DAYS,
        "vms": selectors.vms_for_change(request.user),
        "luks2": services.luks2_capability(),
        "create_form": forms.DiskCreateForm(),
        "encrypt_form": forms.EncryptExistingForm(),
        "unseal_form": forms.UnsealForm(),
        "rotate_form": forms.KekRotateForm(),
        **forms_in_use,
    }


def _disk_context(request, disk, **forms_in_use) -> dict:
    row = next((r for r in services.disks_list(actor=request.user, host=disk.host) if r.disk.pk == disk.pk), None)
    return {
        "disk": disk,
        "row": row,
        "export_form": forms.EscrowExportForm(),
        "test_form": forms.RecoveryTestForm(),
        "restore_form": forms.KeyRestoreForm(),
        **forms_in_use,
    }


def _unlock_context(request, vm, **forms_in_use) -> dict:
    return {
        "vm": vm,
        **services.unlock_policy_get(actor=request.user, vm=vm),
        "start_form": forms.ManualStartForm(),
        "change_form": forms.PassphraseChangeForm(),
        "policy_form": forms.UnlockPolicyForm(),
        **forms_in_use,
    }


@permission_required("encryption.view")
def index(request):
    return render_page(request, "encryption/index.html", _index_context(request), partial="table")


@permission_required("encryption.view")
def disk_detail(request, pk: int):
    disk = services.disk_get(actor=request.user, pk=pk)
    return render_page(request, "encryption/disk.html", _disk_context(request, disk), partial="summary")


@require_POST
@permission_required("encryption.change")
def disk_create(request):
    form = forms.DiskCreateForm(request.POST)
    valid = form.is_valid()
    vm = _vm_named(request, form.cleaned_data["vm"]) if "vm" in form.cleaned_data else None
    if not valid:
        _refused(request, form, action="encryption.disk.create", target=vm, perm="encryption.change")
        context = _index_context(request, create_form=form)
        return _invalid(request, "encryption/index.html", context, partial="create_form", element="create-disk")
    data = form.cleaned_data
    job = services.disk_create_encrypted(
        actor=request.user, vm=vm, size_gib=data["size_gib"], pool=data["pool"], kind=data["kind"]
    )
    return job_started(request, job, f"Creating an encrypted disk for {vm.name}.", reverse("encryption:index"))


@require_POST
@permission_required("encryption.change")
def disk_encrypt_existing(request):
    form = forms.EncryptExistingForm(request.POST)
    valid = form.is_valid()
    vm = _vm_named(request, form.cleaned_data["vm"]) if "vm" in form.cleaned_data else None
    if not valid:
        _refused(request, form, action="encryption.disk.encrypt", target=vm, perm="encryption.change")
        context = _index_context(request, encrypt_form=form)
        return _invalid(request, "encryption/index.html", context, partial="encrypt_form", element="encrypt-disk")
    data = form.cleaned_data
    job = services.disk_encrypt_existing(actor=request.user, vm=vm, path=data["path"], confirmed=data["confirm"])
    return job_started(request, job, f"Encrypting the disk of {vm.name}.", reverse("encryption:index"))


@require_POST
@permission_required("encryption.change")
def disk_change_key(request, pk: int):
    disk = services.disk_for(request.user, pk)
    form = forms.ConfirmForm(request.POST)
    form.is_valid()  # a confirmation cannot be invalid: the service refuses (and audits) "no"
    job = services.disk_change_key(actor=request.user, disk=disk, confirmed=form.cleaned_data["confirm"])
    return job_started(request, job, f"Changing the key of {disk}.", reverse("encryption:disk", args=[pk]))


@require_POST
@permission_required("encryption.change")
def disk_header_backup(request, pk: int):
    disk = services.disk_for(request.user, pk)
    job = services.disk_header_backup(actor=request.user, disk=disk)
    return job_started(request, job, f"Backing up the header of {disk}.", reverse("encryption:disk", args=[pk]))


@require_POST
@permission_required("encryption.keys")
def escrow_export(request, pk: int):
    """Download the key wrapped to the recovery passphrase just typed (never stored)."""
    disk = services.disk_for(request.user, pk)
    form = forms.EscrowExportForm(request.POST)
    if not form.is_valid():
        _refused(request, form, action="encryption.key.escrow_export", target=disk.vm, perm="encryption.keys")
        return _invalid(request, "encryption/disk.html", _disk_context(request, disk, export_form=form))
    document = services.disk_escrow_export(
        actor=request.user, disk=disk, recovery_passphrase=form.cleaned_data["recovery_passphrase"]
    )
    response = HttpResponse(document, content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="escrow-{disk.vm.name}-{disk.target or disk.pk}.json"'
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@permission_required("encryption.keys")
def recovery_test(request, pk: int):
    disk = services.disk_for(request.user, pk)
    form = forms.RecoveryTestForm(request.POST, request.FILES)
    if not form.is_valid():
        _refused(request, form, action="encryption.key.recovery_test", target=disk.vm, perm="encryption.keys")
        return _invalid(request, "encryption/disk.html", _disk_context(request, disk, test_form=form))
    result = services.disk_recovery_test(
        actor=request.user,
        disk=disk,
        escrow=form.cleaned_data["escrow"],
        recovery_passphrase=form.cleaned_data["recovery_passphrase"],
    )
    stale = "" if result["escrow_current"] else " (the escrow is of an earlier key: export a new one)"
    messages.success(request, f"Recovery test passed: the stored and the escrowed key open {disk}{stale}.")
    return redirect("encryption:disk", pk=pk)


@require_POST
@permission_required("encryption.keys")
def key_restore(request, pk: int):
    """Put the disk's key back into the store from an escrow file, then test it."""
    disk = services.disk_for(request.user, pk)
    form = forms.KeyRestoreForm(request.POST, request.FILES)
    if not form.is_valid():
        _refused(request, form, action="encryption.key.restore", target=disk.vm, perm="encryption.keys")
        return _invalid(request, "encryption/disk.html", _disk_context(request, disk, restore_form=form))
    services.disk_key_restore(
        actor=request.user,
        disk=disk,
        escrow=form.cleaned_data["escrow"],
        recovery_passphrase=form.cleaned_data["recovery_passphrase"],
        confirmed=form.cleaned_data["confirm"],
    )
    messages.success(request, f"The key of {disk} was restored from escrow; the recovery test passed.")
    return redirect("encryption:disk", pk=pk)


@require_POST
@permission_required("encryption.change")
def header_backups_destroy_stale(request, pk: int):
    disk = services.disk_for(request.user, pk)
    form = forms.ConfirmForm(request.POST)
    form.is_valid()
    destroyed = services.header_backups_destroy_stale(
        actor=request.user, disk=disk, confirmed=form.cleaned_data["confirm"]
    )
    messages.success(request, f"Destroyed {len(destroyed)} stale header backup(s) of {disk}.")
    return redirect("encryption:disk", pk=pk)


@require_POST
@permission_required("vms.operate")
def vm_start(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    job = services.vm_start_unlocked(actor=request.user, vm=vm)
    return job_started(request, job, f"Starting {vm.name}.", reverse("vms:detail", args=[host, name]))


@require_POST
@permission_required("vms.operate")
def vm_stop(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = forms.VmStopForm(request.POST)
    form.is_valid()
    job = services.vm_stop_locked(
        actor=request.user, vm=vm, force=form.cleaned_data["force"], confirmed=form.cleaned_data["confirm"]
    )
    return job_started(request, job, f"Stopping {vm.name}.", reverse("vms:detail", args=[host, name]))


@require_POST
@permission_required("encryption.keys")
def store_unseal(request):
    form = forms.UnsealForm(request.POST)
    if not form.is_valid():
        _refused(request, form, action="encryption.store.unseal", target=services.STORE_TARGET)
        return _invalid(request, "encryption/index.html", _index_context(request, unseal_form=form))
    services.store_unseal(actor=request.user, passphrase=form.cleaned_data["passphrase"])
    messages.success(request, "The key store is unsealed.")
    return redirect("encryption:index")


@require_POST
@permission_required("encryption.keys")
def store_seal(request):
    form = forms.ConfirmForm(request.POST)
    form.is_valid()
    services.store_seal(actor=request.user, confirmed=form.cleaned_data["confirm"])
    messages.success(request, "The key store is sealed: no encrypted disk can be opened until it is unsealed.")
    return redirect("encryption:index")


@require_POST
@permission_required("encryption.keys")
def kek_rotate(request):
    host = Host.objects.filter(name=settings.DEFAULT_HOST_NAME).first() or Host.objects.first()
    if host is None:
        raise InvalidInput("No host is registered in the portal.")
    form = forms.KekRotateForm(request.POST)
    form.is_valid()  # the new passphrase is optional (a passphrase store's service asks for it)
    job = services.kek_rotate(
        actor=request.user,
        host=host,
        new_passphrase=form.cleaned_data["new_passphrase"],
        confirmed=form.cleaned_data["confirm"],
    )
    return job_started(request, job, "Rotating the key-encryption key.", reverse("encryption:index"))


@permission_required("encryption.view")
def vm_unlock(request, host: str, name: str):
    """A VM's unlock policy: automatic (key store) or manual (an admin types its passphrase)."""
    vm = vm_for(request.user, host, name)
    return render_page(request, "encryption/vm_unlock.html", _unlock_context(request, vm))


@require_POST
@permission_required("encryption.keys")
def vm_unlock_policy(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = forms.UnlockPolicyForm(request.POST)
    if not form.is_valid():
        _refused(request, form, action="encryption.vm.unlock_policy", target=vm, perm="encryption.keys")
        return _invalid(request, "encryption/vm_unlock.html", _unlock_context(request, vm, policy_form=form))
    data = form.cleaned_data
    services.vm_unlock_policy_set(
        actor=request.user, vm=vm, mode=data["mode"], passphrase=data["passphrase"], confirmed=data["confirm"]
    )
    messages.success(request, f"{vm.name} now has {data['mode']} unlock.")
    return redirect("encryption:vm_unlock", host=host, name=name)


@require_POST
@permission_required("encryption.keys")
def vm_start_manual(request, host: str, name: str):
    """Open the disks with the typed passphrase and start the VM, in this request: the
    passphrase never reaches a job, the database or a file."""
    vm = vm_for(request.user, host, name)
    form = forms.ManualStartForm(request.POST)
    if not form.is_valid():
        _refused(request, form, action="encryption.vm.manual_unlock", target=vm, perm="encryption.keys")
        return _invalid(request, "encryption/vm_unlock.html", _unlock_context(request, vm, start_form=form))
    state = services.vm_start_manual(actor=request.user, vm=vm, passphrase=form.cleaned_data["passphrase"])
    messages.success(request, f"{vm.name} is {state}.")
    return redirect("encryption:vm_unlock", host=host, name=name)


@require_POST
@permission_required("encryption.keys")
def vm_passphrase_change(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = forms.PassphraseChangeForm(request.POST)
    if not form.is_valid():
        _refused(request, form, action="encryption.vm.passphrase_change", target=vm, perm="encryption.keys")
        return _invalid(request, "encryption/vm_unlock.html", _unlock_context(request, vm, change_form=form))
    services.vm_passphrase_change(
        actor=request.user,
        vm=vm,
        passphrase=form.cleaned_data["passphrase"],
        new_passphrase=form.cleaned_data["new_passphrase"],
    )
    messages.success(request, f"The passphrase of {vm.name} was changed.")
    return redirect("encryption:vm_unlock", host=host, name=name)
