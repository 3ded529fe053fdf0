"""The encryption pages' forms. They parse what a person typed into typed values (a size in
whole GiB, a kind, a confirmation, an escrow document's bytes) and refuse what no service
should see (two passphrases that differ, an upload that is not an escrow file). The
services check again what they own (passphrase lengths, a disk's state): the command line
and the jobs call them too. A refusal is audited by the view (`refused`), never here, and
no passphrase ever reaches the audit: `submitted` keeps only the fields that are not secret."""

from __future__ import annotations

import json

from django import forms

from apps.core.forms import error_text, submitted

from .keystore import ESCROW_FORMAT
from .models import EncryptedDisk, UnlockPolicy
from .services.common import MAX_SIZE_GIB

MAX_ESCROW_BYTES = 64 * 1024  # an escrow document is about 1 KiB; anything larger is not one
POOL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
VM_NAME = r"^[^/\x00]{1,100}/[^/\x00]{1,200}$"


class ConfirmField(forms.Field):
    """The confirmation box of a destructive action: True only for the value "yes" (which
    only the page's confirm dialog, or --yes on the command line, sends)."""

    widget = forms.HiddenInput

    def __init__(self, **kwargs):
        super().__init__(required=False, **kwargs)

    def to_python(self, value) -> bool:
        return value == "yes"


class _Form(forms.Form):
    secret_fields: tuple[str, ...] = ()

    def submitted(self) -> dict:
        """What the person sent (cut short), without secrets: for the audit of a refusal."""
        return submitted(self)

    def error_text(self) -> str:
        """The errors in one line, for the audit log."""
        return error_text(self)


class DiskCreateForm(_Form):
    vm = forms.RegexField(regex=VM_NAME, label="VM", error_messages={"invalid": "Choose a VM (host/name)."})
    size_gib = forms.IntegerField(
        label="Size (GiB)",
        min_value=1,
        max_value=MAX_SIZE_GIB,
        error_messages={
            "invalid": "The size must be a whole number of GiB.",
            "min_value": f"The size must be between 1 and {MAX_SIZE_GIB} GiB.",
            "max_value": f"The size must be between 1 and {MAX_SIZE_GIB} GiB.",
        },
    )
    kind = forms.ChoiceField(
        label="Type",
        choices=EncryptedDisk.Kind.choices,
        required=False,
        error_messages={"invalid_choice": "Unknown encryption kind: choose luks2 or qemu-luks."},
    )
    pool = forms.RegexField(
        regex=POOL_NAME,
        label="Pool",
        required=False,
        error_messages={"invalid": "A pool name is 1-63 letters, digits and . _ -, starting with a letter or digit."},
    )


    def clean_kind(self) -> str:
        return self.cleaned_data.get("kind") or EncryptedDisk.Kind.LUKS2


class EncryptExistingForm(_Form):
    vm = forms.RegexField(regex=VM_NAME, label="VM", error_messages={"invalid": "Choose a VM (host/name)."})
    path = forms.CharField(label="Disk image path", max_length=1024)
    confirm = ConfirmField()

    def clean_path(self) -> str:
        path = self.cleaned_data["path"].strip()
        if "\x00" in path or not path.startswith("/"):
            raise forms.ValidationError("Give the absolute path of the disk image to encrypt.")
        return path


class ConfirmForm(_Form):
    confirm = ConfirmField()


class EscrowExportForm(_Form):
    secret_fields = ("recovery_passphrase", "recovery_passphrase_again")
    recovery_passphrase = forms.CharField(label="Recovery passphrase", strip=False)
    recovery_passphrase_again = forms.CharField(label="Again", strip=False)

    def clean(self):
        cleaned = super().clean()
        first, again = cleaned.get("recovery_passphrase"), cleaned.get("recovery_passphrase_again")
        if first is not None and again is not None and first != again:
            raise forms.ValidationError("The two recovery passphrases differ.")
        return cleaned


class EscrowFileField(forms.FileField):
    """An uploaded escrow document, read into bytes: refused when larger than an escrow can
    be, not JSON, or not an escrow document of this portal (its format tag). Whether it
    opens, and which disk it belongs to, is the service's question."""

    def clean(self, data, initial=None) -> bytes:
        upload = super().clean(data, initial)
        if upload.size > MAX_ESCROW_BYTES:
            raise forms.ValidationError(
                f"This file is {upload.size // 1024} KiB; an escrow file is a small JSON document "
                f"(at most {MAX_ESCROW_BYTES // 1024} KiB). Choose the file the portal exported."
            )
        document = upload.read()
        try:
            parsed = json.loads(document)
        except (ValueError, UnicodeDecodeError):
            raise forms.ValidationError("This file is not JSON: choose the escrow file the portal exported.") from None
        if not isinstance(parsed, dict) or parsed.get("format") != ESCROW_FORMAT:
            raise forms.ValidationError("This is not a key escrow file of this portal (or it is damaged).")
        return document


class RecoveryTestForm(_Form):
    secret_fields = ("recovery_passphrase",)
    escrow = EscrowFileField(
        label="Escrow file", error_messages={"required": "Choose the escrow file (a small JSON document)."}
    )
    recovery_passphrase = forms.CharField(label="Recovery passphrase", strip=False)

    def submitted(self) -> dict:
        upload = self.files.get("escrow")
        return {"escrow": upload.name[:40]} if upload is not None else {}


class KeyRestoreForm(RecoveryTestForm):
    confirm = ConfirmField()


class UnsealForm(_Form):
    secret_fields = ("passphrase",)
    passphrase = forms.CharField(label="Store passphrase", strip=False)


class KekRotateForm(_Form):
    secret_fields = ("new_passphrase",)
    new_passphrase = forms.CharField(label="New store passphrase", strip=False, required=False)
    confirm = ConfirmField()


class VmStopForm(_Form):
    force = ConfirmField()
    confirm = ConfirmField()


class UnlockPolicyForm(_Form):
    secret_fields = ("passphrase", "passphrase_again")
    mode = forms.ChoiceField(
        label="Unlock",
        choices=UnlockPolicy.Mode.choices,
        error_messages={"invalid_choice": "Choose automatic or manual unlock."},
    )
    passphrase = forms.CharField(label="Passphrase", strip=False)
    passphrase_again = forms.CharField(label="Again", strip=False, required=False)
    confirm = ConfirmField()

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("mode") == UnlockPolicy.Mode.MANUAL and cleaned.get("passphrase") is not None:
            if cleaned["passphrase"] != cleaned.get("passphrase_again", ""):
                raise forms.ValidationError("The two passphrases differ.")
        return cleaned


class ManualStartForm(_Form):
    secret_fields = ("passphrase",)
    passphrase = forms.CharField(label="Passphrase", strip=False)


class PassphraseChangeForm(_Form):
    secret_fields = ("passphrase", "new_passphrase", "new_passphrase_again")
    passphrase = forms.CharField(label="Current passphrase", strip=False)
    new_passphrase = forms.CharField(label="New passphrase", strip=False)
    new_passphrase_again = forms.CharField(label="Again", strip=False)

    def clean(self):
        cleaned = super().clean()
        new, again = cleaned.get("new_passphrase"), cleaned.get("new_passphrase_again")
        if new is not None and again is not None and new != again:
            raise forms.ValidationError("The two new passphrases differ.")
        return cleaned
