"""The encryption pages' forms: typed values out, clear errors for what no service should
see, and no secret in what a refusal audits."""

import json

from django.core.files.uploadedfile import SimpleUploadedFile

from apps.encryption import forms
from apps.encryption.keystore import ESCROW_FORMAT


def _escrow(content: bytes, name: str = "escrow.json"):
    return {"escrow": SimpleUploadedFile(name, content)}


def test_a_size_is_a_whole_number_of_gib_in_range_and_the_kind_defaults_to_luks2():
    form = forms.DiskCreateForm({"vm": "local/web-1", "size_gib": "12", "pool": ""})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["size_gib"] == 12 and form.cleaned_data["kind"] == "luks2"
    for bad, message in (("x", "whole number"), ("1.5", "whole number"), ("0", "between 1 and"), ("5000", "between")):
        form = forms.DiskCreateForm({"vm": "local/web-1", "size_gib": bad})
        assert not form.is_valid() and message in " ".join(form.errors["size_gib"]), bad
    form = forms.DiskCreateForm({"vm": "local/web-1", "size_gib": "1", "kind": "zfs", "pool": "../etc"})
    assert not form.is_valid() and set(form.errors) == {"kind", "pool"}
    assert "luks2 or qemu-luks" in form.error_text()


def test_a_confirmation_is_only_the_value_yes():
    assert forms.ConfirmForm({"confirm": "yes"}).is_valid()
    for value, expected in (("yes", True), ("no", False), ("", False), ("on", False)):
        form = forms.ConfirmForm({"confirm": value})
        form.is_valid()
        assert form.cleaned_data["confirm"] is expected, value
    form = forms.ConfirmForm({})
    form.is_valid()
    assert form.cleaned_data["confirm"] is False


def test_an_uploaded_escrow_file_is_checked_for_size_and_format():
    good = json.dumps({"format": ESCROW_FORMAT, "binding": {}, "wrapped": "x"}).encode()
    form = forms.RecoveryTestForm({"recovery_passphrase": "p"}, _escrow(good))
    assert form.is_valid(), form.errors
    assert form.cleaned_data["escrow"] == good
    cases = (
        (b"x" * (forms.MAX_ESCROW_BYTES + 1), "an escrow file is a small JSON document"),
        (b"\xff\xfe not json", "not JSON"),
        (b'{"format": "something-else"}', "not a key escrow file"),
        (b"[1, 2]", "not a key escrow file"),
    )
    for content, message in cases:
        form = forms.RecoveryTestForm({"recovery_passphrase": "p"}, _escrow(content))
        assert not form.is_valid() and message in " ".join(form.errors["escrow"]), content[:20]
    missing = forms.KeyRestoreForm({"recovery_passphrase": "p", "confirm": "yes"}, {})
    assert not missing.is_valid() and "Choose the escrow file" in " ".join(missing.errors["escrow"])


def test_passphrases_that_differ_are_refused_and_never_audited():
    secret = "the admin's recovery passphrase"
    form = forms.EscrowExportForm({"recovery_passphrase": secret, "recovery_passphrase_again": secret + "!"})
    assert not form.is_valid() and "differ" in form.error_text()
    assert secret not in json.dumps(form.submitted()) and secret not in form.error_text()
    policy = forms.UnlockPolicyForm({"mode": "manual", "passphrase": secret, "passphrase_again": "", "confirm": "yes"})
    assert not policy.is_valid() and "differ" in policy.error_text()
    assert policy.submitted() == {"mode": "manual", "confirm": "yes"}
    automatic = forms.UnlockPolicyForm({"mode": "automatic", "passphrase": secret, "confirm": "yes"})
    assert automatic.is_valid(), automatic.errors  # the current passphrase alone: nothing to repeat
    change = forms.PassphraseChangeForm({"passphrase": "a", "new_passphrase": secret, "new_passphrase_again": "b"})
    assert not change.is_valid() and "two new passphrases differ" in change.error_text()
    assert change.submitted() == {}
