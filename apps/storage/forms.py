"""The storage forms: every number people type (on the pages and on the `storage_quota`
command line) is parsed here, into a typed value, with messages for people; each form's
`service_args()` is what its service takes (bytes, ints, Decimals). A form refuses what a
service would refuse with a 500 or let slip by: `version=²` (digits `int` does not take)
or no version at all. A refusal is audited with `apps.audit.services.refused`."""

from __future__ import annotations

from decimal import Decimal

from django import forms

from apps.core.errors import InvalidInput
from apps.core.forms import error_text, refuse, submitted, validated  # noqa: F401  (the storage views' names)

from .fields import gib_to_bytes, parse_action, parse_gib_decimal, parse_percent, parse_ratio, parse_reserve
from .models import BreachAction


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
        return parse_gib_decimal(value, self.what)


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


def _bytes(gib: Decimal | None) -> int | None:
    return None if gib is None else gib_to_bytes(gib)


class BreachActionField(forms.ChoiceField):
    """alert, refuse or suspend; a wrong one is named with the choices."""

    def __init__(self, *, blank: bool = False, **kwargs):
        choices = [("", "unchanged"), *BreachAction.choices] if blank else BreachAction.choices
        super().__init__(choices=choices, **kwargs)

    def validate(self, value):
        try:
            super().validate(value)
        except forms.ValidationError as exc:
            if exc.code != "invalid_choice":
                raise
            try:
                parse_action(value)
            except InvalidInput as refused_value:
                raise forms.ValidationError(f"Select a valid choice. {refused_value.message}", code="invalid_choice")
            raise


class QuotaForm(forms.Form):
    """A VM's own quota: the fields given change, the others stay. The command line
    (versioned=False) has no page whose version could be out of date."""

    limit_gib = GibField(what="quota", required=False, label="Hard limit (GiB)")
    alert_percent = PercentField(what="alert threshold", required=False, label="Alert at (%)")
    breach_action = BreachActionField(blank=True, required=False, label="On breach")
    confirm = forms.BooleanField(required=False)
    version = VersionField()

    def __init__(self, *args, versioned: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if not versioned:
            del self.fields["version"]

    def clean_confirm(self):
        return self.data.get("confirm") == "yes"

    def service_args(self) -> dict:
        d = self.cleaned_data
        return {"limit_bytes": _bytes(d["limit_gib"]), "alert_percent": d["alert_percent"],
                "breach_action": d["breach_action"] or None, "confirmed": d["confirm"],
                "expected_version": d.get("version")}  # fmt: skip


class ThresholdForm(forms.Form):
    """`storage_quota alert-threshold VM PERCENT`."""

    percent = PercentField(what="alert threshold", label="Alert at (%)")

    def service_args(self) -> dict:
        return {"percent": self.cleaned_data["percent"]}


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

    def service_args(self) -> dict:
        return {"to_bytes": _bytes(self.cleaned_data["to_gib"]), "by_bytes": _bytes(self.cleaned_data["by_gib"])}


class DefaultsForm(forms.Form):
    """The portal-wide defaults (admins)."""

    quota_gib = GibField(what="default quota", label="Default VM quota (GiB)")
    alert_percent = PercentField(what="alert threshold", label="Alert threshold (%)")
    breach_action = BreachActionField(label="On breach")
    max_overcommit = RatioField(what="maximum overcommit", label="Pool maximum overcommit")
    reserve_percent = ReserveField(what="reserve", label="Pool reserve (%)")
    version = VersionField()

    def service_args(self) -> dict:
        d = self.cleaned_data
        return {"quota_bytes": _bytes(d["quota_gib"]), "alert_percent": d["alert_percent"],
                "breach_action": d["breach_action"], "max_overcommit": d["max_overcommit"],
                "reserve_percent": d["reserve_percent"], "expected_version": d["version"]}  # fmt: skip


class PoolLimitForm(forms.Form):
    """A pool's own limits; an empty field falls back to the default."""

    max_overcommit = RatioField(what="maximum overcommit", required=False, label="Maximum overcommit (x)")
    reserve_percent = ReserveField(what="reserve", required=False, label="Reserve (% free)")

    def service_args(self) -> dict:
        return {"max_overcommit": self.cleaned_data["max_overcommit"],
                "reserve_percent": self.cleaned_data["reserve_percent"]}  # fmt: skip


class VolumeCreateForm(forms.Form):
    size_gib = GibField(what="volume size", label="Size (GiB)")
    volume = forms.CharField(required=False, max_length=63, label="Name")
    pool = forms.CharField(required=False, max_length=63, label="Pool")

    def service_args(self) -> dict:
        d = self.cleaned_data
        return {"size_bytes": _bytes(d["size_gib"]), "name": d["volume"].strip(), "pool": d["pool"].strip()}


class VolumeResizeForm(forms.Form):
    size_gib = GibField(what="new size", label="New size (GiB)")

    def service_args(self) -> dict:
        return {"size_bytes": _bytes(self.cleaned_data["size_gib"])}
