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
