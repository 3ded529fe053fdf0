"""The VM page's forms: what a lifecycle or snapshot request may carry, checked before any
service runs (the services check again for the command line and the API)."""

from __future__ import annotations

from django import forms

from apps.core.errors import InvalidInput
from apps.core.validators import validate_name

from .services import LABELS


def _name_validator(what: str):
    def check(value):
        try:
            validate_name(value, what)
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message, code="invalid")

    return check


class LifecycleForm(forms.Form):
    action = forms.ChoiceField(
        label="Action",
        choices=list(LABELS.items()),
        error_messages={"invalid_choice": "Unknown action %(value)s: choose " + ", ".join(LABELS) + "."},
    )
    confirm = forms.BooleanField(required=False)

    def clean_confirm(self) -> bool:
        return self.data.get("confirm") == "yes"


class SnapshotCreateForm(forms.Form):
    snapshot = forms.CharField(label="Snapshot name", max_length=63, validators=[_name_validator("snapshot name")])
    description = forms.CharField(label="Description", max_length=500, required=False)


class SnapshotDeleteForm(forms.Form):
    confirm = forms.BooleanField(required=False)

    def clean_confirm(self) -> bool:
        return self.data.get("confirm") == "yes"
