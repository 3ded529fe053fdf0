"""What every app's forms share: the errors in one line, what the person sent (without
secrets), and the refusal of a form audited as its service would have audited it.

Views validate with a form; on invalid input they call `refuse(...)` and re-render the form
with its errors (or, for a form that starts a job, answer the errors as a toast); the
command line calls `validated(...)`, which raises InvalidInput with the same messages."""

from __future__ import annotations

from django import forms

from apps.audit.services import refused
from apps.core.errors import InvalidInput


def error_text(form: forms.Form) -> str:
    """The form's errors in one line, for the audit log and toasts."""
    parts = []
    for name, errors in form.errors.items():
        label = form.fields[name].label if name in form.fields else ""
        parts.append(f"{label}: {' '.join(errors)}" if label else " ".join(errors))
    return "; ".join(parts)[:1000]


def submitted(form: forms.Form) -> dict:
    """What the person sent (trimmed and cut short), for the audit of a refusal; fields the
    form names in `secret_fields` are left out."""
    secret = set(getattr(form, "secret_fields", ()))
    return {
        name: str(form.data.get(name, ""))[:40]
        for name in form.fields
        if name not in secret and form.data.get(name, "") not in ("", None)
    }


def refuse(form: forms.Form, *, actor, action: str, target=None, perm: str | None = None, obj=None) -> None:
    """Audit the form's refusal as its service would have (after its permission check: a
    denial is audited and raised as such)."""
    refused(actor=actor, action=action, target=target, obj=obj, perm=perm, params=submitted(form),
            error=error_text(form))  # fmt: skip


def validated(form: forms.Form, *, actor, action: str, target=None, perm: str | None = None, obj=None):
    """The form, valid, for callers without a page to re-render (the command line, forms
    that start a job): an invalid one is refused (audited) and raised as InvalidInput."""
    if not form.is_valid():
        refuse(form, actor=actor, action=action, target=target, perm=perm, obj=obj)
        raise InvalidInput(error_text(form))
    return form
