"""/metrics for Prometheus (a bearer token or loopback, never a session) and the Security
page (the host security posture)."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from apps.audit.services import refused
from apps.core.views_util import job_started, permission_required, redirect_htmx, render_page

from . import selectors, services, training
from .forms import AuditRulesInstallForm, IncidentPlanForm, TrainingAckForm, error_text


@login_not_required
@require_GET
def metrics(request):
    try:
        services.metrics_access(
            remote_addr=request.META.get("REMOTE_ADDR"),
            authorization=request.META.get("HTTP_AUTHORIZATION", ""),
            proxied=any(h in request.META for h in services.PROXY_HEADERS),
        )
    except services.MetricsRefused as exc:
        response = HttpResponse(exc.message + "\n", status=exc.status, content_type="text/plain")
        if exc.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # the 0.0.4 text format: every Prometheus 2.x reads it
    response = HttpResponse(services.metrics_scrape(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response["Cache-Control"] = "no-store"
    return response


# Not a session view: tests/unit/test_url_permissions.py checks it by this token setting.
metrics.portal_token_setting = "METRICS_TOKEN"  # noqa: S105 (the setting's name)


@permission_required("monitoring.view")
def security(request):
    context = {
        "hosts": selectors.posture_for(request.user),
        "alerts": selectors.open_alerts_for(request.user),
        "failed_deliveries": selectors.failed_deliveries(),
        "interval_minutes": settings.POSTURE_CHECK_INTERVAL // 60,
    }
    return render_page(request, "monitoring/security.html", context, partial="results")


def _plan_page(request, form=None, status=200):
    plan = services.incident_plan()
    fields = ("detect", "contain", "recover", "review", "contacts")
    if plan is not None:
        initial = {f: getattr(plan, f) for f in fields} | {"version": plan.version}
    else:
        initial = {**services.PLAN_TEMPLATE, "version": 0}
    context = {"plan": plan, "form": form or IncidentPlanForm(initial=initial)}
    return render_page(request, "monitoring/plan.html", context, partial="plan", status=status)


@permission_required("monitoring.view")
def incident_plan(request):
    return _plan_page(request)


@require_POST
@permission_required("security.manage")
def incident_plan_save(request):
    form = IncidentPlanForm(request.POST)
    target = ("incident_plan", "1", "incident response plan")
    if not form.is_valid():
        refused(actor=request.user, action="monitoring.incident_plan.save", target=target,
                error=error_text(form), perm="security.manage")
        return _plan_page(request, form, status=400)
    data = form.cleaned_data
    services.incident_plan_save(
        actor=request.user, detect=data["detect"], contain=data["contain"], recover=data["recover"],
        review=data["review"], contacts=data["contacts"], expected_version=data["version"],
    )  # fmt: skip
    messages.success(request, "Incident response plan saved.")
    return redirect_htmx(request, reverse("monitoring:incident_plan"))


@require_POST
@permission_required("security.manage")
def incident_plan_review(request):
    services.incident_plan_reviewed(actor=request.user)
    messages.success(request, "Review of the incident response plan recorded.")
    return redirect_htmx(request, reverse("monitoring:incident_plan"))


def _rules_page(request, form=None, status=200):
    context = {"rules": services.audit_rules_diff(), "form": form}
    return render_page(request, "monitoring/audit_rules.html", context, partial="rules", status=status)


@permission_required("monitoring.view")
def audit_rules(request):
    return _rules_page(request)


@require_POST
@permission_required("security.manage")
def audit_rules_install(request):
    form = AuditRulesInstallForm(request.POST)
    if not form.is_valid():
        refused(actor=request.user, action=services.AUDIT_RULES_JOB, target=("file", "", "auditd rules"),
                error=error_text(form), perm="security.manage", obj=services.posture_host())
        return _rules_page(request, form, status=400)
    job = services.audit_rules_install_request(actor=request.user, seen_sha256=form.cleaned_data["sha256"])
    return job_started(request, job, "Installing the auditd rules.", back=reverse("monitoring:audit_rules"))


def _training_page(request, status=200):
    done = training.acknowledged_by(request.user)
    context = {"items": [(key, text, done.get(key)) for key, text in training.ITEMS.items()]}
    return render_page(request, "monitoring/training.html", context, partial="items", status=status)


@permission_required("security.manage")
def training_page(request):
    return _training_page(request)


@require_POST
@permission_required("security.manage")
def training_acknowledge(request):
    form = TrainingAckForm(request.POST)
    if not form.is_valid():
        refused(actor=request.user, action="monitoring.training.acknowledge", target=request.user,
                error=error_text(form), perm="security.manage")
        return _training_page(request, status=400)
    training.training_acknowledge(actor=request.user, item=form.cleaned_data["item"])
    return _training_page(request)


@require_POST
@permission_required("security.manage")
def lynis_run(request):
    job = services.lynis_scan_request(actor=request.user)
    return job_started(request, job, "Lynis scan started.", back=reverse("monitoring:security"))


@require_POST
@permission_required("security.manage")
def security_run(request):
    job = services.posture_check_request(actor=request.user)
    return job_started(request, job, "Security checks started.", back=reverse("monitoring:security"))
