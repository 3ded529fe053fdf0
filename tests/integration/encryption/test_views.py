"""The encryption pages: thin views over the services, re-authentication for sensitive
actions, scope hiding, HTMX partials, no inline script or style."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from apps.accounts.mfa_status import mfa_enabled
from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from apps.core.gateways import libvirt as gw
from apps.core.models import Host, Job
from apps.encryption import services
from apps.encryption.models import EncryptedDisk
from tests.conftest import PASSWORD, totp_code, unique

from .conftest import run_job

pytestmark = pytest.mark.libvirt


@pytest.fixture
def disk(shut_vm, operator, test_pool):
    job = run_job(services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool))
    assert job.state == Job.State.SUCCEEDED, job.error
    d = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    yield d
    gw.volume_delete_if_exists(d.host.uri, d.pool, d.volume)


def _reauth(client, next_url="/encryption/"):
    """The password typed again, and the current code for a user with two-factor sign-in."""
    user = get_user_model().objects.get(pk=client.session["_auth_user_id"])
    data = {"password": PASSWORD, "next": next_url}
    if mfa_enabled(user):
        data["code"] = totp_code(user)
    return client.post(reverse("accounts:reauth"), data)


def test_index_lists_disks_with_their_header_facts_and_no_inline_code(client, operator, disk):
    client.force_login(operator)
    response = client.get(reverse("encryption:index"))
    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-disk="{disk.pk}"' in html and "aes-xts-plain64" in html and "argon2id" in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and " style=" not in html
    partial = client.get(reverse("encryption:index"), headers={"HX-Request": "true"})
    assert partial.status_code == 200 and b"<html" not in partial.content and b"aes-xts-plain64" in partial.content
    assert client.get(reverse("encryption:disk", args=[disk.pk])).status_code == 200


def test_a_vm_outside_the_operators_scope_is_hidden(client, make_user, disk, host):
    other = Host.objects.create(name=unique("other"), uri="test:///default")
    scoped = make_user(role=Role.OPERATOR, scope="host", host=other)
    # an operator of another host: sees the page, not the disk
    client.force_login(scoped)
    assert client.get(reverse("encryption:disk", args=[disk.pk])).status_code == 404
    assert f'data-disk="{disk.pk}"'.encode() not in client.get(reverse("encryption:index")).content
    response = client.post(reverse("encryption:header_backup", args=[disk.pk]))
    assert response.status_code == 404


def test_create_from_the_page_queues_a_job(client, operator, shut_vm, test_pool):
    client.force_login(operator)
    response = client.post(
        reverse("encryption:create"),
        {"vm": f"{shut_vm.host.name}/{shut_vm.name}", "size_gib": "1", "kind": "luks2", "pool": test_pool},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200 and b'data-state="queued"' in response.content
    job = Job.objects.get(kind="encryption.disk.create")
    job = run_job(job)
    assert job.state == Job.State.SUCCEEDED, job.error
    d = EncryptedDisk.objects.get(pk=job.params["disk_id"])
    gw.volume_delete_if_exists(d.host.uri, d.pool, d.volume)
    bad = client.post(reverse("encryption:create"), {"vm": f"{shut_vm.host.name}/{shut_vm.name}", "size_gib": "x"})
    assert bad.status_code == 400 and b"whole number" in bad.content


def test_change_key_needs_a_recent_reauthentication_and_a_confirmation(client, operator, disk):
    client.force_login(operator)
    url = reverse("encryption:change_key", args=[disk.pk])
    response = client.post(url, {"confirm": "yes"}, headers={"HX-Request": "true"})
    assert response.status_code == 204 and response["HX-Redirect"].startswith(reverse("accounts:reauth"))
    assert not Job.objects.filter(kind="encryption.disk.change_key").exists()
    wrong = client.post(reverse("accounts:reauth"), {"password": "not my password", "next": "/encryption/"})
    assert wrong.status_code == 400
    assert _reauth(client).status_code == 302
    assert client.post(url, {}).status_code == 400  # no confirmation
    response = client.post(url, {"confirm": "yes"})
    assert response.status_code == 302
    assert Job.objects.filter(kind="encryption.disk.change_key").count() == 1
    reauths = AuditEvent.objects.filter(action__startswith="auth.reauth").order_by("id")
    assert list(reauths.values_list("action", "outcome")) == [
        ("auth.reauth.required", "denied"),
        ("auth.reauth.failed", "failed"),
        ("auth.reauth", "success"),
    ]


def test_escrow_download_and_recovery_test_from_the_page(client, admin, disk):
    client.force_login(admin)
    export = reverse("encryption:escrow_export", args=[disk.pk])
    passphrase = "the admin's recovery passphrase"
    assert client.post(export, {"recovery_passphrase": passphrase}).status_code == 302  # to re-auth
    _reauth(client)
    differ = client.post(export, {"recovery_passphrase": passphrase, "recovery_passphrase_again": "other"})
    assert differ.status_code == 400
    response = client.post(export, {"recovery_passphrase": passphrase, "recovery_passphrase_again": passphrase})
    assert response.status_code == 200 and response["Content-Disposition"].startswith("attachment")
    assert response["Cache-Control"] == "no-store"
    document = response.content
    from django.core.files.uploadedfile import SimpleUploadedFile

    test = client.post(
        reverse("encryption:recovery_test", args=[disk.pk]),
        {"escrow": SimpleUploadedFile("escrow.json", document), "recovery_passphrase": passphrase},
    )
    assert test.status_code == 302
    disk.refresh_from_db()
    assert disk.recovery_tested_at is not None and disk.escrowed_at is not None
    failed = client.post(
        reverse("encryption:recovery_test", args=[disk.pk]),
        {"escrow": SimpleUploadedFile("escrow.json", document), "recovery_passphrase": "wrong wrong wrong"},
    )
    assert failed.status_code == 400 and b"Wrong recovery passphrase" in failed.content
    for event in AuditEvent.objects.all():
        assert passphrase not in f"{event.params} {event.error}"


def test_a_passphrase_store_is_unsealed_and_rotated_from_the_page(client, admin, host, settings, tmp_path):
    settings.ENCRYPTION_KEY_DIR = tmp_path / "keys"
    settings.ENCRYPTION_RUNTIME_DIR = tmp_path / "run"
    settings.ENCRYPTION_KEK_PROVIDER = "passphrase"
    client.force_login(admin)
    _reauth(client)
    first = "the first store passphrase"
    assert client.post(reverse("encryption:unseal"), {"passphrase": first}).status_code == 302  # initialises
    store = services.get_store()
    assert store.initialized() and not store.sealed()
    key_id = store.new_key_id()
    store.put(key_id=key_id, vm_uuid="00000000-0000-0000-0000-000000000001", volume="/p/x.img", key=b"k" * 64)
    assert client.post(reverse("encryption:seal"), {"confirm": "yes"}).status_code == 302
    assert store.sealed()
    page = client.get(reverse("encryption:index"))
    assert b"sealed" in page.content and b'name="passphrase"' in page.content
    wrong = client.post(reverse("encryption:unseal"), {"passphrase": "not the passphrase"})
    assert wrong.status_code == 400 and b"Wrong passphrase" in wrong.content and store.sealed()
    client.post(reverse("encryption:unseal"), {"passphrase": first})
    assert not store.sealed()
    # KEK rotation to a new passphrase: derived in the request, the job only re-wraps
    response = client.post(reverse("encryption:rotate"), {"confirm": "yes", "new_passphrase": "a second passphrase"})
    assert response.status_code == 302
    job = run_job(Job.objects.get(kind="encryption.kek.rotate"))
    assert job.state == Job.State.SUCCEEDED, job.error
    assert "passphrase" not in str(job.params)
    store.seal()
    store.unseal(b"a second passphrase")
    assert store.get(key_id=key_id, vm_uuid="00000000-0000-0000-0000-000000000001", volume="/p/x.img") == b"k" * 64


def test_the_page_says_what_protects_the_keys_and_what_the_baseline_recommends(client, operator, settings):
    client.force_login(operator)
    html = client.get(reverse("encryption:index")).content.decode()
    protection = re.search(r'data-testid="key-protection">([^<]*)<', html).group(1)
    assert str(settings.ENCRYPTION_KEK_FILE_DIR) in protection and "apart from the key files" in protection
    recommendation = re.search(r'data-testid="kek-recommendation">(.*?)</p>', html, re.S).group(1)
    assert "HSM" in recommendation and "TPM" in recommendation and "off the host" in recommendation
    kek_files = list(settings.ENCRYPTION_KEK_FILE_DIR.glob("*.kek"))
    assert kek_files and not list(settings.ENCRYPTION_KEY_DIR.rglob("*.kek"))


def test_a_refused_form_rerenders_with_its_errors_and_is_audited(client, operator, shut_vm, test_pool):
    """Bad input never reaches a service: the form's partial comes back (HTMX) in place of
    the form with the field's error, the refusal is audited, nothing is created."""
    client.force_login(operator)
    vm_name = f"{shut_vm.host.name}/{shut_vm.name}"
    response = client.post(
        reverse("encryption:create"),
        {"vm": vm_name, "size_gib": "ten", "kind": "luks2", "pool": test_pool},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 400
    assert response["HX-Retarget"] == "#create-disk" and response["HX-Reswap"] == "outerHTML"
    html = response.content.decode()
    assert "<html" not in html and 'id="create-disk"' in html and 'data-testid="create-errors"' in html
    assert "whole number of GiB" in html and f'value="{vm_name}" selected' in html
    event = AuditEvent.objects.get(action="encryption.disk.create")
    assert event.outcome == "failed" and "whole number" in event.error
    assert event.target_name == str(shut_vm) and event.params["size_gib"] == "ten"
    assert not EncryptedDisk.objects.exists() and not Job.objects.exists()


def test_an_upload_that_is_not_an_escrow_file_is_refused_by_the_form(client, admin, disk):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(admin)
    _reauth(client)
    secret = "a recovery passphrase typed here"
    response = client.post(
        reverse("encryption:recovery_test", args=[disk.pk]),
        {"escrow": SimpleUploadedFile("notes.txt", b"not an escrow"), "recovery_passphrase": secret},
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert 'data-testid="recovery-test-errors"' in html and "not JSON" in html
    event = AuditEvent.objects.get(action="encryption.key.recovery_test")
    assert event.outcome == "failed" and "not JSON" in event.error and event.params == {"escrow": "notes.txt"}
    assert secret not in f"{event.params} {event.error}"
    disk.refresh_from_db()
    assert disk.recovery_tested_at is None
