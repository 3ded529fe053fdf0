"""Encryption pages. Thin: parse, check the permission (decorator; services check again
against the object), call one service, render a partial or redirect. Sensitive actions
(key change, escrow export, recovery test, unseal, seal, KEK rotation) need a recent
re-authentication (listed in apps.accounts.reauth.REAUTH_POLICY); destructive ones a
confirmation."""

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.core.errors import InvalidInput
from apps.core.models import Host
from apps.core.views_util import job_started, permission_required, render_page
from apps.vms.services import vm_for

from . import selectors, services

MAX_ESCROW_BYTES = 64 * 1024


def _vm_from_post(request):
    """The VM named by the form's `vm` field ("host/name"), if the user may see it."""
    host, _, name = request.POST.get("vm", "").partition("/")
    return vm_for(request.user, host, name)


def _confirmed(request) -> bool:
    """The form's confirmation box; the service refuses (and audits) an unconfirmed request."""
    return request.POST.get("confirm") == "yes"


@permission_required("encryption.view")
def index(request):
    context = {
        "rows": services.disks_list(actor=request.user),
        "store": services.store_status(actor=request.user),
        "kinds": services.EncryptedDisk.Kind.choices,
        "max_age_days": settings.ENCRYPTION_KEY_MAX_AGE_DAYS,
        "vms": selectors.vms_for_change(request.user),
        "luks2": services.luks2_capability(),
    }
    return render_page(request, "encryption/index.html", context, partial="table")


@permission_required("encryption.view")
def disk_detail(request, pk: int):
    disk = services.disk_get(actor=request.user, pk=pk)
    row = next((r for r in services.disks_list(actor=request.user, host=disk.host) if r.disk.pk == disk.pk), None)
    return render_page(request, "encryption/disk.html", {"disk": disk, "row": row}, partial="summary")


@require_POST
@permission_required("encryption.change")
def disk_create(request):
    vm = _vm_from_post(request)
    job = services.disk_create_encrypted(
        actor=request.user,
        vm=vm,
        size_gib=request.POST.get("size_gib", ""),
        pool=request.POST.get("pool", "").strip(),
        kind=request.POST.get("kind", "luks2"),
    )
    return job_started(request, job, f"Creating an encrypted disk for {vm.name}.", reverse("encryption:index"))


@require_POST
@permission_required("encryption.change")
def disk_encrypt_existing(request):
    vm = _vm_from_post(request)
    job = services.disk_encrypt_existing(
        actor=request.user, vm=vm, path=request.POST.get("path", "").strip(), confirmed=_confirmed(request)
    )
    return job_started(request, job, f"Encrypting the disk of {vm.name}.", reverse("encryption:index"))


@require_POST
@permission_required("encryption.change")
def disk_change_key(request, pk: int):
    disk = services.disk_for(request.user, pk)
    job = services.disk_change_key(actor=request.user, disk=disk, confirmed=_confirmed(request))
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
    passphrase = request.POST.get("recovery_passphrase", "")
    if passphrase != request.POST.get("recovery_passphrase_again", ""):
        raise InvalidInput("The two recovery passphrases differ.")
    document = services.disk_escrow_export(actor=request.user, disk=disk, recovery_passphrase=passphrase)
    response = HttpResponse(document, content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="escrow-{disk.vm.name}-{disk.target or disk.pk}.json"'
    response["Cache-Control"] = "no-store"
    return response


def _escrow_upload(request, purpose: str) -> bytes:
    """The uploaded escrow document (refused when missing or larger than an escrow can be)."""
    upload = request.FILES.get("escrow")
    if upload is None or upload.size > MAX_ESCROW_BYTES:
        raise InvalidInput(f"Choose the escrow file (a small JSON document) {purpose}.")
    return upload.read()


@require_POST
@permission_required("encryption.keys")
def recovery_test(request, pk: int):
    disk = services.disk_for(request.user, pk)
    escrow = _escrow_upload(request, "to test")
    result = services.disk_recovery_test(
        actor=request.user,
        disk=disk,
        escrow=escrow,
        recovery_passphrase=request.POST.get("recovery_passphrase", ""),
    )
    stale = "" if result["escrow_current"] else " (the escrow is of an earlier key: export a new one)"
    messages.success(request, f"Recovery test passed: the stored and the escrowed key open {disk}{stale}.")
    return redirect("encryption:disk", pk=pk)


@require_POST
@permission_required("encryption.keys")
def key_restore(request, pk: int):
    """Put the disk's key back into the store from an escrow file, then test it."""
    disk = services.disk_for(request.user, pk)
    escrow = _escrow_upload(request, "to restore from")
    services.disk_key_restore(
        actor=request.user,
        disk=disk,
        escrow=escrow,
        recovery_passphrase=request.POST.get("recovery_passphrase", ""),
        confirmed=_confirmed(request),
    )
    messages.success(request, f"The key of {disk} was restored from escrow; the recovery test passed.")
    return redirect("encryption:disk", pk=pk)


@require_POST
@permission_required("encryption.change")
def header_backups_destroy_stale(request, pk: int):
    disk = services.disk_for(request.user, pk)
    destroyed = services.header_backups_destroy_stale(actor=request.user, disk=disk, confirmed=_confirmed(request))
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
    job = services.vm_stop_locked(
        actor=request.user,
        vm=vm,
        force=request.POST.get("force") == "yes",
        confirmed=request.POST.get("confirm") == "yes",
    )
    return job_started(request, job, f"Stopping {vm.name}.", reverse("vms:detail", args=[host, name]))


@require_POST
@permission_required("encryption.keys")
def store_unseal(request):
    services.store_unseal(actor=request.user, passphrase=request.POST.get("passphrase", ""))
    messages.success(request, "The key store is unsealed.")
    return redirect("encryption:index")


@require_POST
@permission_required("encryption.keys")
def store_seal(request):
    services.store_seal(actor=request.user, confirmed=_confirmed(request))
    messages.success(request, "The key store is sealed: no encrypted disk can be opened until it is unsealed.")
    return redirect("encryption:index")


@require_POST
@permission_required("encryption.keys")
def kek_rotate(request):
    host = Host.objects.filter(name=settings.DEFAULT_HOST_NAME).first() or Host.objects.first()
    if host is None:
        raise InvalidInput("No host is registered in the portal.")
    job = services.kek_rotate(
        actor=request.user,
        host=host,
        new_passphrase=request.POST.get("new_passphrase", ""),
        confirmed=_confirmed(request),
    )
    return job_started(request, job, "Rotating the key-encryption key.", reverse("encryption:index"))


@permission_required("encryption.view")
def vm_unlock(request, host: str, name: str):
    """A VM's unlock policy: automatic (key store) or manual (an admin types its passphrase)."""
    vm = vm_for(request.user, host, name)
    context = {"vm": vm, **services.unlock_policy_get(actor=request.user, vm=vm)}
    return render_page(request, "encryption/vm_unlock.html", context)


@require_POST
@permission_required("encryption.keys")
def vm_unlock_policy(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    passphrase = request.POST.get("passphrase", "")
    mode = request.POST.get("mode", "")
    if mode == "manual" and passphrase != request.POST.get("passphrase_again", ""):
        raise InvalidInput("The two passphrases differ.")
    services.vm_unlock_policy_set(
        actor=request.user, vm=vm, mode=mode, passphrase=passphrase, confirmed=_confirmed(request)
    )
    messages.success(request, f"{vm.name} now has {mode} unlock.")
    return redirect("encryption:vm_unlock", host=host, name=name)


@require_POST
@permission_required("encryption.keys")
def vm_start_manual(request, host: str, name: str):
    """Open the disks with the typed passphrase and start the VM, in this request: the
    passphrase never reaches a job, the database or a file."""
    vm = vm_for(request.user, host, name)
    state = services.vm_start_manual(actor=request.user, vm=vm, passphrase=request.POST.get("passphrase", ""))
    messages.success(request, f"{vm.name} is {state}.")
    return redirect("encryption:vm_unlock", host=host, name=name)


@require_POST
@permission_required("encryption.keys")
def vm_passphrase_change(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    new = request.POST.get("new_passphrase", "")
    if new != request.POST.get("new_passphrase_again", ""):
        raise InvalidInput("The two new passphrases differ.")
    services.vm_passphrase_change(
        actor=request.user, vm=vm, passphrase=request.POST.get("passphrase", ""), new_passphrase=new
    )
    messages.success(request, f"The passphrase of {vm.name} was changed.")
    return redirect("encryption:vm_unlock", host=host, name=name)
