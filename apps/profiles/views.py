import json

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.core.forms import validated
from apps.core.models import Host
from apps.core.views_util import job_started, permission_required, render_page
from apps.vms.services import vm_for

from . import provision, services
from .forms import ProfileForm, ProfileImportForm, VmCreateForm, VmDeleteForm, VmResourcesForm


@permission_required("vms.create")
def profile_list(request):
    profiles = services.profiles_list(actor=request.user)
    return render_page(request, "profiles/list.html", {"profiles": profiles, "import_form": ProfileImportForm()})


@permission_required("vms.create")
def profile_detail(request, name: str):
    profile = services.profile_get(actor=request.user, name=name)
    form = ProfileForm(initial={"description": profile.description, "spec": json.dumps(profile.spec, indent=2)})
    versions = profile.versions.all()[:20]
    return render_page(request, "profiles/detail.html", {"profile": profile, "form": form, "versions": versions})


@require_POST
@permission_required("profiles.change")
def profile_save(request, name: str):
    form = validated(ProfileForm(request.POST), actor=request.user, action="profiles.profile.save",
                     perm="profiles.change")  # fmt: skip
    profile = services.profile_save(actor=request.user, name=name, spec=form.cleaned_data["spec"],
                                    description=form.cleaned_data["description"])  # fmt: skip
    messages.success(request, f"Profile {profile.name} saved as version {profile.version}.")
    return redirect("profiles:detail", profile.name)


@require_POST
@permission_required("profiles.change")
def profile_import(request):
    form = validated(ProfileImportForm(request.POST), actor=request.user, action="profiles.profile.import",
                     perm="profiles.change")  # fmt: skip
    profile = services.profile_import(actor=request.user, text=form.cleaned_data["document"])
    messages.success(request, f"Profile {profile.name} imported as version {profile.version}.")
    return redirect("profiles:detail", profile.name)


@permission_required("vms.create")
def profile_export(request, name: str):
    profile = services.profile_get(actor=request.user, name=name)
    response = HttpResponse(services.profile_export(profile), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{profile.name}.json"'
    return response


@permission_required("vms.create")
def vm_new(request):
    profiles = services.profiles_list(actor=request.user)
    return render_page(request, "profiles/vm_new.html", {"profiles": profiles, "form": VmCreateForm(),
                                                         "hosts": Host.objects.all()})  # fmt: skip


@require_POST
@permission_required("vms.create")
def vm_create(request):
    form = validated(VmCreateForm(request.POST), actor=request.user, action="vms.vm.create", perm="vms.create")
    data = form.cleaned_data
    host = data["host"]
    profile = services.profile_get(actor=request.user, name=data["profile"])
    job = provision.vm_create(actor=request.user, host=host, name=data["name"], profile=profile,
                              overrides=data["overrides"], pool=data["pool"], iso=data["iso"],
                              quota_gib=data["quota_gib"])  # fmt: skip
    back = reverse("vms:detail", args=[host.name, data["name"]])
    return job_started(request, job, f"Creating {data['name']} from profile {profile.name}.", back)


@require_POST
@permission_required("vms.change")
def vm_resources(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = validated(VmResourcesForm(request.POST), actor=request.user, action="vms.vm.resources", target=vm,
                     perm="vms.change")  # fmt: skip
    message = provision.vm_resources_change(actor=request.user, vm=vm, vcpus=form.cleaned_data["vcpus"],
                                            memory_mb=form.cleaned_data["memory_mb"],
                                            limits=form.limits())  # fmt: skip
    messages.success(request, message)
    return redirect("vms:detail", vm.host.name, vm.name)


@require_POST
@permission_required("vms.delete")
def vm_delete(request, host: str, name: str):
    vm = vm_for(request.user, host, name)
    form = validated(VmDeleteForm(request.POST), actor=request.user, action="vms.vm.delete", target=vm,
                     perm="vms.delete")  # fmt: skip
    job = provision.vm_delete(actor=request.user, vm=vm, confirm_name=form.cleaned_data["confirm_name"],
                              with_disks=form.cleaned_data["with_disks"])  # fmt: skip
    return job_started(request, job, f"Deleting {vm.name}.", reverse("vms:list"))
