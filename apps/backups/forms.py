"""The Backups page's forms: input parsed into typed values; the services check again (the
command line and beat call them too)."""

from __future__ import annotations

from django import forms

from apps.core.forms import error_text, submitted  # noqa: F401  (the backup views' names)
from apps.core.validators import NAME_RE


class BackupNowForm(forms.Form):
    vm = forms.IntegerField(min_value=1, label="VM")
    destination = forms.CharField(max_length=400, label="Destination")


class RestoreForm(forms.Form):
    new_name = forms.RegexField(regex=NAME_RE, max_length=63, label="New VM name",
                                error_messages={"invalid": "Use letters, digits, '.', '_' or '-'."})  # fmt: skip
    pool = forms.RegexField(regex=NAME_RE, max_length=63, label="Pool")


class PruneForm(forms.Form):
    keep_last = forms.IntegerField(min_value=0, max_value=10000, required=False, label="Keep last")
    keep_daily = forms.IntegerField(min_value=0, max_value=10000, required=False, label="Keep daily")
    keep_weekly = forms.IntegerField(min_value=0, max_value=10000, required=False, label="Keep weekly")
    keep_monthly = forms.IntegerField(min_value=0, max_value=10000, required=False, label="Keep monthly")
    confirm = forms.ChoiceField(choices=[("yes", "yes")], label="Confirmation",
                                error_messages={"required": "Pruning deletes backups: confirm it."})  # fmt: skip

    def clean(self):
        data = super().clean()
        keep = {k: data.get(k) or 0 for k in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")}
        if not any(keep.values()):
            raise forms.ValidationError("Retention must keep at least one backup.")
        data.update(keep)
        return data


class PolicyForm(forms.Form):
    """A backup policy: which VMs (every VM: the default; a zone; VMs by name, one for a
    per-VM policy), how often, where, how long. `name` only when creating."""

    name = forms.RegexField(regex=NAME_RE, max_length=63, required=False, label="Name",
                            error_messages={"invalid": "Use letters, digits, '.', '_' or '-'."})  # fmt: skip
    selector = forms.ChoiceField(choices=[("all", "every VM (default)"), ("zone", "the VMs of a zone"),
                                          ("names", "VMs by name")], label="VMs")  # fmt: skip
    zone = forms.CharField(max_length=63, required=False, label="Zone")
    vm_names = forms.CharField(max_length=2000, required=False, label="VM names",
                               help_text="comma-separated; one name for a per-VM policy")  # fmt: skip
    destination = forms.CharField(max_length=400, label="Destination")
    interval_hours = forms.IntegerField(min_value=1, max_value=24 * 366, label="Every (hours)")
    keep_last = forms.IntegerField(min_value=0, max_value=10000, required=False, label="Keep last")
    keep_daily = forms.IntegerField(min_value=0, max_value=10000, required=False, label="Keep daily")
    keep_weekly = forms.IntegerField(min_value=0, max_value=10000, required=False, label="Keep weekly")
    keep_monthly = forms.IntegerField(min_value=0, max_value=10000, required=False, label="Keep monthly")
    verify_max_age_days = forms.IntegerField(min_value=1, max_value=3650, label="Verify within (days)")
    enabled = forms.BooleanField(required=False, label="Enabled")

    def __init__(self, *args, creating: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.creating = creating
        self.fields["name"].required = creating

    def clean_destination(self):
        from apps.core.errors import InvalidInput

        from .services import validate_destination

        try:
            return validate_destination(self.cleaned_data["destination"])
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message) from None

    def clean(self):
        import re

        data = super().clean()
        names = [n.strip() for n in (data.get("vm_names") or "").split(",") if n.strip()]
        for name in names:
            if not re.fullmatch(NAME_RE, name):
                self.add_error("vm_names", f"{name[:40]!r} is not a VM name.")
        data["vm_names"] = names
        selector = data.get("selector")
        if selector == "zone" and not re.fullmatch(NAME_RE, data.get("zone") or ""):
            self.add_error("zone", "Name the zone whose VMs this policy backs up.")
        if selector == "names" and not names:
            self.add_error("vm_names", "Name at least one VM.")
        keep = {k: data.get(k) or 0 for k in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")}
        if not any(keep.values()):
            raise forms.ValidationError("Retention must keep at least one backup.")
        data.update(keep)
        return data

    def changes(self) -> dict:
        return {k: self.cleaned_data[k] for k in ("selector", "zone", "vm_names", "destination", "interval_hours",
                                                  "keep_last", "keep_daily", "keep_weekly", "keep_monthly",
                                                  "verify_max_age_days", "enabled")}  # fmt: skip
