"""Forms of the profile pages and the New VM page. The services validate again (the JSON
schema, the host, quota, zones): these catch what can be said before any of that."""

from __future__ import annotations

from django import forms

from apps.core.errors import InvalidInput
from apps.core.validators import validate_name


def _json_object(text: str, what: str) -> dict:
    """The text as a JSON object, or the parser's complaint as the field's error."""
    from .services import parse_json

    try:
        return parse_json(text, what)
    except InvalidInput as exc:
        raise forms.ValidationError(exc.message, code="invalid")


def _name(what: str):
    def check(value):
        try:
            validate_name(value, what)
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message, code="invalid")

    return check


class ProfileForm(forms.Form):
    description = forms.CharField(label="Description", max_length=200, required=False)
    spec = forms.CharField(label="Profile JSON", max_length=20_000, widget=forms.Textarea(attrs={"rows": 18}))

    def clean_spec(self) -> dict:
        return _json_object(self.cleaned_data["spec"], "profile")


class ProfileImportForm(forms.Form):
    document = forms.CharField(label="Profile JSON (with its name)", max_length=20_000, widget=forms.Textarea)


class VmCreateForm(forms.Form):
    name = forms.CharField(label="Name", max_length=63, validators=[_name("VM name")])
    profile = forms.CharField(label="Profile", max_length=63, validators=[_name("profile name")])
    pool = forms.CharField(label="Storage pool", max_length=63, required=False, validators=[_name("pool name")])
    iso = forms.CharField(label="Boot ISO (a pool volume's path)", max_length=4096, required=False)
    quota_gib = forms.IntegerField(label="Disk quota of its own (GiB; empty: the default quota)", min_value=1,
                                   max_value=1 << 20, required=False)  # fmt: skip
    overrides = forms.CharField(label="Overrides (JSON)", max_length=20_000, required=False,
                                widget=forms.Textarea(attrs={"rows": 6}))  # fmt: skip
    host = forms.CharField(label="Host", max_length=63, required=False)

    def clean_overrides(self) -> dict | None:
        text = self.cleaned_data["overrides"]
        return _json_object(text, "overrides") if text else None

    def clean_host(self):
        """The named host; none named: the first (a one-host portal's form may leave it out)."""
        from apps.core.models import Host

        name = self.cleaned_data["host"]
        host = Host.objects.filter(name=name).first() if name else Host.objects.order_by("pk").first()
        if host is None:
            raise forms.ValidationError(f"No host named {name!r}." if name else "No host is known to the portal.")
        return host


class VmResourcesForm(forms.Form):
    vcpus = forms.IntegerField(label="vCPUs", min_value=1, max_value=64)
    memory_mb = forms.IntegerField(label="Memory (MiB)", min_value=16)
    cpu_quota_percent = forms.IntegerField(label="CPU quota (% of each vCPU)", min_value=1, max_value=100,
                                           required=False)  # fmt: skip
    memory_max_mb = forms.IntegerField(label="Memory hard limit (MiB)", min_value=16, required=False)
    io_bandwidth_mb = forms.IntegerField(label="Disk bandwidth (MiB/s)", min_value=1, required=False)
    iops = forms.IntegerField(label="Disk IOPS", min_value=1, required=False)

    def limits(self) -> dict:
        keys = ("cpu_quota_percent", "memory_max_mb", "io_bandwidth_mb", "iops")
        return {k: self.cleaned_data[k] for k in keys if self.cleaned_data.get(k)}


class VmDeleteForm(forms.Form):
    confirm_name = forms.CharField(label="Type the VM's name to confirm", max_length=63)
    with_disks = forms.BooleanField(label="Delete its disks too", required=False)
