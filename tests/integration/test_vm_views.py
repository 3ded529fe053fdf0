"""The VM pages over HTTP: full pages and HTMX partials, and forged or hostile requests
refused with a readable message, an audit event and no change."""

import pytest
from django.urls import reverse

from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from tests.conftest import reauthenticate

pytestmark = pytest.mark.libvirt


def action_url(vm):
    return reverse("vms:action", args=[vm.host.name, vm.name])


def test_vm_list_and_detail_show_live_state(client, viewer, vm):
    client.force_login(viewer)
    page = client.get(reverse("vms:list")).content.decode()
    assert f'data-vm="{vm.name}"' in page and "running" in page
    detail = client.get(reverse("vms:detail", args=[vm.host.name, vm.name])).content.decode().replace("\xa0", " ")
    assert "1 GiB" in detail and "64 MiB" in detail and "vda" in detail and "GB" not in detail
    assert 'data-action="suspend"' not in detail  # a viewer is offered no actions
    history = reverse("vms:history", args=[vm.host.name, vm.name])
    assert f'href="{history}"' in detail  # the History tab
    assert 'data-testid="who-can-act"' not in detail  # viewers see no access review


def test_the_vm_page_links_auditors_to_who_can_act_on_it(client, auditor, vm):
    client.force_login(auditor)
    detail = client.get(reverse("vms:detail", args=[vm.host.name, vm.name])).content.decode()
    assert f'href="{reverse("reviews:vm", args=[vm.host.name, vm.name])}" data-testid="who-can-act"' in detail


def test_htmx_requests_get_only_the_partial(client, viewer, vm):
    client.force_login(viewer)
    response = client.get(reverse("vms:list"), HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="vm-table"') and "<html" not in body
    assert "HX-Request" in response["Vary"]


def test_operator_post_starts_a_job_and_shows_its_progress(client, operator, vm):
    client.force_login(operator)
    response = client.post(action_url(vm), {"action": "suspend"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    job = Job.objects.get()
    assert f'id="job-{job.pk}"' in response.content.decode() and 'hx-trigger="every 1s"' in response.content.decode()
    assert (job.kind, job.actor_name, job.source_ip) == ("vms.vm.suspend", operator.username, "127.0.0.1")


def test_forged_post_to_a_vm_outside_the_users_scope_is_404_and_audited(client, make_user, host, vm, make_domain):
    from apps.vms.models import VirtualMachine
    from apps.vms.services import inventory_sync

    other_name = make_domain()
    inventory_sync(host)
    mine = VirtualMachine.objects.get(host=host, name=other_name)
    scoped = make_user(role=Role.OPERATOR, scope="vm", vm=mine)
    client.force_login(scoped)
    response = client.post(action_url(vm), {"action": "suspend"})
    assert response.status_code == 404  # the VM stays invisible, not merely forbidden
    assert gw.domain_state(host.uri, vm.name) == "running"
    assert not Job.objects.exists()
    refused = AuditEvent.objects.get(action="vms.vm.lookup")
    assert (refused.outcome, refused.actor_name, refused.target_name) == ("denied", scoped.username, vm.name)


def test_viewer_post_is_403_with_a_readable_page_and_a_denied_event(client, viewer, vm):
    client.force_login(viewer)
    response = client.post(action_url(vm), {"action": "suspend"})
    assert response.status_code == 403
    assert "permission" in response.content.decode()
    assert AuditEvent.objects.filter(actor_name=viewer.username, outcome="denied").exists()
    assert gw.domain_state(vm.host.uri, vm.name) == "running"


@pytest.mark.parametrize("name", ["demo;reboot", "$(id)", "..", "a" * 80])
def test_hostile_vm_names_in_the_url_are_refused(client, operator, host, name):
    client.force_login(operator)
    response = client.post(f"/vms/{host.name}/{name}/action/", {"action": "start"})
    assert response.status_code in (400, 404)
    assert not Job.objects.exists()
    assert AuditEvent.objects.filter(actor_name=operator.username, outcome="failed").exists()


def test_htmx_errors_come_back_as_a_toast(client, operator, vm):
    client.force_login(operator)
    response = client.post(action_url(vm), {"action": "resume"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 409
    assert response["HX-Retarget"] == "#toasts"
    assert "it is running" in response.content.decode()
    assert AuditEvent.objects.get(action="vms.vm.resume").outcome == "failed"


def test_force_off_needs_a_recent_reauthentication(client, operator, vm):
    client.force_login(operator)
    page = f"http://testserver{reverse('vms:detail', args=[vm.host.name, vm.name])}"
    form = {"action": "force_off", "confirm": "yes"}
    response = client.post(action_url(vm), form, HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL=page)
    assert response.status_code == 204 and response["HX-Redirect"].startswith(reverse("accounts:reauth"))
    assert not Job.objects.exists() and gw.domain_state(vm.host.uri, vm.name) == "running"
    refused = AuditEvent.objects.get(action="auth.reauth.required")
    assert (refused.outcome, refused.params) == ("denied", {"page": "vms:action"})
    reauthenticate(client)
    response = client.post(action_url(vm), form, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert Job.objects.get().kind == "vms.vm.force_off"


def test_deleting_a_snapshot_from_the_page_needs_a_recent_reauthentication(client, operator, vm):
    gw.snapshot_create(vm.host.uri, vm.name, "before-upgrade", "")
    client.force_login(operator)
    url = reverse("vms:snapshot_delete", args=[vm.host.name, vm.name, "before-upgrade"])
    response = client.post(url, {"confirm": "yes"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:reauth"))
    assert not Job.objects.exists()
    assert AuditEvent.objects.get(action="auth.reauth.required").params == {"page": "vms:snapshot_delete"}
    reauthenticate(client)
    assert client.post(url, {"confirm": "yes"}).status_code == 302
    job = Job.objects.get()
    assert (job.kind, job.params["snapshot"]) == ("vms.snapshot.delete", "before-upgrade")


def test_destructive_action_without_confirmation_changes_nothing(client, operator, vm):
    client.force_login(operator)
    reauthenticate(client)
    response = client.post(action_url(vm), {"action": "force_off"})
    assert response.status_code == 400 and "needs confirmation" in response.content.decode()
    assert gw.domain_state(vm.host.uri, vm.name) == "running"


def test_a_vm_job_the_system_asked_for_runs_and_is_audited_as_the_system(vm):
    """A job with no user (a command run without --as, a breach suspension) is the system's:
    the handler's permission check lets it through, and the audit log names "system"."""
    from apps.core import jobs
    from apps.vms import services

    job = services.vm_lifecycle(actor=None, vm=vm, action="suspend")
    assert (job.actor_id, job.actor_name) == (None, "system")
    jobs.job_run(job.pk, worker="test")  # in this process: the test's transaction never sends it to a worker
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert gw.domain_state(vm.host.uri, vm.name) == "paused"
    done = AuditEvent.objects.filter(job_id=job.pk).order_by("id").values_list("outcome", "actor_name", "actor_id")
    assert list(done) == [("requested", "system", None), ("success", "system", None)]
    assert not AuditEvent.objects.filter(outcome="denied").exists()


def test_the_detail_page_offers_actions_only_where_the_user_may_act(client, make_user, host, vm, make_domain):
    """An operator of one VM who may view every VM: the actions on their VM, none on another."""
    from apps.accounts.models import RoleAssignment
    from apps.vms.models import VirtualMachine
    from apps.vms.services import inventory_sync

    other = make_domain()  # shut off: not booted
    inventory_sync(host)
    user = make_user(role=Role.OPERATOR, scope="vm", vm=vm)
    RoleAssignment.objects.create(user=user, role=Role.VIEWER, scope="global")
    client.force_login(user)
    mine = client.get(reverse("vms:detail", args=[host.name, vm.name])).content.decode()
    assert 'data-action="suspend"' in mine and "Take snapshot" in mine
    theirs = VirtualMachine.objects.get(host=host, name=other)
    response = client.get(reverse("vms:detail", args=[host.name, theirs.name]))
    assert response.status_code == 200
    assert 'data-action="start"' not in response.content.decode() and "Take snapshot" not in response.content.decode()


@pytest.mark.parametrize(
    "url_name, data, action, message",
    [
        ("vms:snapshot_create", {"snapshot": "x'; drop", "description": ""}, "vms.snapshot.create", "Invalid snapshot"),
        ("vms:snapshot_create", {"snapshot": "ok-name", "description": "d" * 501}, "vms.snapshot.create", "500"),
        ("vms:action", {"action": "reboot-now"}, "vms.vm.action", "Unknown action"),
    ],
)
def test_the_vm_forms_refuse_bad_input_before_any_service(client, operator, vm, url_name, data, action, message):
    client.force_login(operator)
    reauthenticate(client)
    response = client.post(reverse(url_name, args=[vm.host.name, vm.name]), data, HTTP_HX_REQUEST="true")
    assert response.status_code == 400 and message in response.content.decode()
    event = AuditEvent.objects.get(action=action)
    assert event.outcome == "failed" and message in event.error
    assert not Job.objects.exists() and gw.snapshot_list(vm.host.uri, vm.name) == []
