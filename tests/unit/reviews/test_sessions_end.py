"""Revoking a role, disabling a user or changing their password ends that user's other
sessions at once; a queued job re-checks its permission when it runs; the optional policy
disables dormant accounts."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import Role, RoleAssignment
from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.core.models import Job
from apps.reviews.services import dormant_accounts_disable
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db
User = get_user_model()


def signed_in(user, password=PASSWORD) -> Client:
    c = Client()
    assert c.post(reverse("login"), {"username": user.username, "password": password}).status_code == 302
    assert c.get(reverse("dashboard")).status_code == 200
    return c


def refused(c: Client) -> bool:
    response = c.get(reverse("dashboard"))
    return response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_revoking_a_role_ends_the_users_sessions(admin, make_user):
    user = make_user("rita-two-roles", Role.VIEWER)
    extra = RoleAssignment.objects.create(user=user, role=Role.OPERATOR, scope="global")
    laptop, phone = signed_in(user), signed_in(user)
    services.assignment_remove(actor=admin, assignment=extra)
    assert refused(laptop) and refused(phone)
    ended = AuditEvent.objects.filter(action="auth.session.ended", actor_name=user.username)
    assert ended.count() == 2 and ended.first().outcome == "denied"
    assert AuditEvent.objects.get(action="accounts.role.revoke").params["sessions_ended"] == "all"
    again = signed_in(user)  # signing in again works, with the roles left
    assert again.get(reverse("vms:list")).status_code == 200
    assert not refused(again)


def test_other_users_sessions_are_left_alone(admin, operator, viewer):
    bystander = signed_in(viewer)
    services.assignment_remove(actor=admin, assignment=RoleAssignment.objects.get(user=operator))
    assert not refused(bystander)


def test_changing_a_password_ends_the_other_sessions(admin, operator):
    old = signed_in(operator)
    services.user_password_set(actor=admin, user=operator, password="a-brand-new-passphrase-7")
    assert refused(old)
    signed_in(operator, "a-brand-new-passphrase-7")
    event = AuditEvent.objects.get(action="accounts.user.password")
    assert "a-brand-new-passphrase-7" not in str(event.params) and event.outcome == "success"


def test_a_weak_password_is_refused_and_changes_nothing(admin, operator):
    from apps.core.errors import InvalidInput

    session = signed_in(operator)
    with pytest.raises(InvalidInput):
        services.user_password_set(actor=admin, user=operator, password="short")
    assert User.objects.get(pk=operator.pk).check_password(PASSWORD)
    assert not refused(session)


def test_a_queued_job_rechecks_the_permission_when_it_runs(admin, operator, make_user):
    from apps.core.models import Host
    from apps.vms.models import VirtualMachine

    host = Host.objects.create(name="rev-jobs", uri="test:///default")
    vm = VirtualMachine.objects.create(host=host, uuid="00000000-0000-0000-0000-00000000abcd", name="rev-queued")
    job = jobs.job_enqueue(actor=operator, kind="vms.vm.start", target=vm, host=host, params={"action": "start"})
    services.assignment_remove(actor=admin, assignment=RoleAssignment.objects.get(user=operator))
    jobs.job_run(job.pk, worker="here")
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.FAILED and "vms.operate" in job.error
    outcomes = list(AuditEvent.objects.filter(action="vms.vm.start").order_by("id").values_list("outcome", flat=True))
    assert outcomes == ["requested", "denied", "denied"]  # asked; refused by the handler's check; the job's end


def test_a_disabled_users_queued_job_is_refused(admin, operator):
    from apps.core.models import Host
    from apps.vms.models import VirtualMachine

    host = Host.objects.create(name="rev-jobs2", uri="test:///default")
    vm = VirtualMachine.objects.create(host=host, uuid="00000000-0000-0000-0000-00000000abce", name="rev-queued2")
    job = jobs.job_enqueue(actor=operator, kind="vms.vm.start", target=vm, host=host, params={"action": "start"})
    services.user_set_active(actor=admin, user=operator, active=False)
    jobs.job_run(job.pk, worker="here")
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.FAILED and "disabled" in job.error
    assert AuditEvent.objects.filter(action="vms.vm.start", outcome="denied").count() == 1


def test_the_dormant_policy_disables_dormant_accounts_only_when_set(settings, admin, make_user):
    old = timezone.now() - timedelta(days=40)
    sleepy = make_user("sid-sleepy", Role.OPERATOR)
    User.objects.filter(pk=sleepy.pk).update(last_login=old)
    never = make_user("nell-never", Role.VIEWER)
    User.objects.filter(pk=never.pk).update(date_joined=old)
    User.objects.filter(pk=admin.pk).update(last_login=old)  # the only admin: kept
    fresh = make_user("fay-fresh", Role.VIEWER)
    settings.ACCESS_DISABLE_DORMANT_DAYS = 0
    assert dormant_accounts_disable() == []
    settings.ACCESS_DISABLE_DORMANT_DAYS = 30
    assert dormant_accounts_disable() == ["nell-never", "sid-sleepy"]
    assert set(User.objects.filter(is_active=False).values_list("username", flat=True)) == {"nell-never", "sid-sleepy"}
    assert User.objects.get(pk=fresh.pk).is_active and User.objects.get(pk=admin.pk).is_active
    events = AuditEvent.objects.filter(action="accounts.user.disable")
    assert {(e.actor_name, e.params["reason"]) for e in events} == {("system", "dormant: no sign-in for 30 days")}


def test_beat_runs_the_dormant_policy_hourly(settings, admin, make_user):
    from django.utils.module_loading import import_string

    entry = settings.CELERY_BEAT_SCHEDULE["reviews-disable-dormant"]
    assert entry["schedule"] <= 3600
    task = import_string(entry["task"])
    sleepy = make_user("sam-sleepy", Role.VIEWER)
    User.objects.filter(pk=sleepy.pk).update(last_login=timezone.now() - timedelta(days=100))
    settings.ACCESS_DISABLE_DORMANT_DAYS = 90
    assert task.apply().get() == ["sam-sleepy"]  # the task itself, run here as beat would queue it
    assert not User.objects.get(pk=sleepy.pk).is_active
