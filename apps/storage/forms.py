"""The storage pages' forms: every numeric field is parsed here, into a typed value, with
the same messages for people as the services (the services check again: the command line
and tasks call them too). A form refuses what a service would refuse with a 500 or let
slip by: `version=²` (digits `int` does not take) or no version at all."""

from __future__ import annotations

from decimal import Decimal

from django import forms

from apps.core.errors import InvalidInput

from .models import BreachAction
from .services.common import parse_gib, parse_percent, parse_ratio, parse_reserve


class _ParsedField(forms.Field):
    """A text field checked by one of the services' parse functions; empty is None."""

    def __init__(self, *, what: str, **kwargs):
        self.what = what
        super().__init__(**kwargs)

    def parse(self, value: str):
        raise NotImplementedError

    def to_python(self, value):
        value = "" if value is None else str(value).strip()
        if value in self.empty_values:
            return None
        try:
            return self.parse(value)
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message, code="invalid")


class GibField(_ParsedField):
    """A size in GiB (Decimal), up to 3 decimals, more than 0, at most STORAGE_MAX_SIZE_GIB."""

    def parse(self, value):
        parse_gib(value, self.what)
        return Decimal(value)


class PercentField(_ParsedField):
    """A whole percentage from 1 to 100."""

    def parse(self, value):
        return parse_percent(value, self.what)


class ReserveField(_ParsedField):
    """A whole percentage from 0 to 99."""

    def parse(self, value):
        return parse_reserve(value)


class RatioField(_ParsedField):
    """An overcommit ratio from 1 to 100, 2 decimals at most."""

    def parse(self, value):
        return parse_ratio(value)


class VersionField(forms.IntegerField):
    """The version of the record the person saw (optimistic locking): required, a plain
    whole number; anything else is a page out of date or tampered with."""

    default_error_messages = {
        "required": "The form has no version: reload the page and try again.",
        "invalid": "The form's version is not a number: reload the page and try again.",
        "min_value": "The form's version is not valid: reload the page and try again.",
    }

    def __init__(self, **kwargs):
        super().__init__(min_value=0, widget=forms.HiddenInput, **kwargs)

    def to_python(self, value):
        value = "" if value is None else str(value).strip()
        if value and not (value.isascii() and value.isdigit()):
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return super().to_python(value)


ACTION_CHOICES = [("", "unchanged"), *BreachAction.choices]


class QuotaForm(forms.Form):
    """A VM's own quota: the fields given change, the others stay."""

    limit_gib = GibField(what="quota", required=False, label="Hard limit (GiB)")
    alert_percent = PercentField(what="alert threshold", required=False, label="Alert at (%)")
    breach_action = forms.ChoiceField(choices=ACTION_CHOICES, required=False, label="On breach")
    confirm = forms.BooleanField(required=False)
    version = VersionField()

    def clean_confirm(self):
        return self.data.get("confirm") == "yes"


class ExpandForm(forms.Form):
    """Raise a VM's hard limit to a new total, or by an amount."""

    to_gib = GibField(what="new quota", required=False, label="Expand to (GiB)")
    by_gib = GibField(what="expansion", required=False, label="or by (GiB)")

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        if (cleaned.get("to_gib") is None) == (cleaned.get("by_gib") is None):
            raise forms.ValidationError(
                "Give either the new quota (to GiB) or the amount to add (by GiB), not both.", code="one_of"
            )
        return cleaned


class DefaultsForm(forms.Form):
    """The portal-wide defaults (admins)."""

    quota_gib = GibField(what="default quota", label="Default VM quota (GiB)")
    alert_percent = PercentField(what="alert threshold", label="Alert threshold (%)")
    breach_action = forms.ChoiceField(choices=BreachAction.choices, label="On breach")
    max_overcommit = RatioField(what="maximum overcommit", label="Pool maximum overcommit")
    reserve_percent = ReserveField(what="reserve", label="Pool reserve (%)")
    version = VersionField()


class PoolLimitForm(forms.Form):
    """A pool's own limits; an empty field falls back to the default."""

    max_overcommit = RatioField(what="maximum overcommit", required=False, label="Maximum overcommit (x)")
    reserve_percent = ReserveField(what="reserve", required=False, label="Reserve (% free)")


class VolumeCreateForm(forms.Form):
    size_gib = GibField(what="volume size", label="Size (GiB)")
    volume = forms.CharField(required=False, max_length=63, label="Name")
    pool = forms.CharField(required=False, max_length=63, label="Pool")


class VolumeResizeForm(forms.Form):
    size_gib = GibField(what="new size", label="New size (GiB)")


def error_text(form: forms.Form) -> str:
    """The form's errors in one line, for the audit log and toasts."""
    parts = []
    for name, errors in form.errors.items():
        label = form.fields[name].label if name in form.fields else ""
        parts.append(f"{label}: {' '.join(errors)}" if label else " ".join(errors))
    return "; ".join(parts)


def submitted(form: forms.Form) -> dict:
    """What the person sent (trimmed and cut short), for the audit of a refusal."""
    return {name: str(form.data.get(name, ""))[:40] for name in form.fields if form.data.get(name, "") != ""}
