"""The audit log's filters, read from the URL (a GET form): a view can be bookmarked and
shared. Malformed dates, an unknown outcome, a page size past the cap or a cursor that was
not signed by this portal are refused with a message; nothing is read then."""

from __future__ import annotations

import re

from django import forms
from django.core import signing
from django.core.exceptions import ValidationError

from .models import AuditEvent
from .selectors import Cursor, EventFilters

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50
CURSOR_SALT = "audit.events.cursor"
ACTION_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-]*$")
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]


def sign_cursor(cursor: Cursor) -> str:
    """An opaque page link: the position (time and id of the event at the page's edge) and
    the direction, signed so that a changed or made-up one is refused."""
    return signing.dumps([cursor.created_at.isoformat(), cursor.id, cursor.direction], salt=CURSOR_SALT,
                         compress=True)  # fmt: skip


def unsign_cursor(value: str) -> Cursor:
    from datetime import datetime

    try:
        created_at, pk, direction = signing.loads(value, salt=CURSOR_SALT)
        cursor = Cursor(datetime.fromisoformat(created_at), int(pk), direction)
    except (signing.BadSignature, ValueError, TypeError):
        raise ValidationError("This page link is broken or was altered: start again from the newest events.") from None
    if cursor.direction not in ("older", "newer") or cursor.created_at.tzinfo is None:
        raise ValidationError("This page link is broken or was altered: start again from the newest events.")
    return cursor


class EventFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=150, label="Actor")
    action = forms.CharField(required=False, max_length=80, label="Action starts with")
    target = forms.CharField(required=False, max_length=200, label="Target")
    q = forms.CharField(required=False, max_length=200, label="Target name contains")
    host = forms.CharField(required=False, max_length=63, label="Host")
    vm = forms.CharField(required=False, max_length=63, label="VM")
    outcome = forms.ChoiceField(required=False, label="Outcome",
                                choices=[("", "any"), *AuditEvent.Outcome.choices])  # fmt: skip
    since = forms.DateTimeField(required=False, label="From (UTC)", input_formats=DATETIME_FORMATS)
    until = forms.DateTimeField(required=False, label="To (UTC)", input_formats=DATETIME_FORMATS)
    ip = forms.GenericIPAddressField(required=False, label="Address")
    size = forms.IntegerField(required=False, min_value=1, max_value=MAX_PAGE_SIZE, label="Page size")
    cursor = forms.CharField(required=False, max_length=500, label="Page link")
    end = forms.ChoiceField(required=False, choices=[("", "newest"), ("oldest", "oldest")], label="Page")

    # what a page link carries besides the cursor: the filters, and the page size if chosen
    FILTER_FIELDS = ("actor", "action", "target", "q", "host", "vm", "outcome", "since", "until", "ip")

    def clean_action(self):
        value = self.cleaned_data["action"].strip()
        if not ACTION_PREFIX_RE.match(value):
            raise ValidationError("An action prefix holds only letters, digits, dots, dashes and underscores.")
        return value

    def clean_cursor(self):
        value = self.cleaned_data["cursor"].strip()
        return unsign_cursor(value) if value else None

    def clean(self):
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise ValidationError("The start of the time range is after its end.")
        return data

    @property
    def page_size(self) -> int:
        return self.cleaned_data.get("size") or DEFAULT_PAGE_SIZE

    def filters(self) -> EventFilters:
        d = self.cleaned_data
        return EventFilters(**{name: d.get(name) or None for name in self.FILTER_FIELDS})

    def link_params(self) -> dict[str, str]:
        """The query string of this view without its position: what every page link keeps."""
        params = {name: self.data[name] for name in self.FILTER_FIELDS if self.data.get(name)}
        if self.cleaned_data.get("size"):
            params["size"] = str(self.cleaned_data["size"])
        return params
