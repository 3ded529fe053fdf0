"""/metrics for Prometheus (a bearer token or loopback, never a session) and the Security
page (the host security posture)."""

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from apps.core.views_util import job_started, permission_required, render_page

from . import selectors, services


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
    return HttpResponse(services.metrics_scrape(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


# Not a session view: tests/unit/test_url_permissions.py checks it by this token setting.
metrics.portal_token_setting = "METRICS_TOKEN"  # noqa: S105 (the setting's name)


@permission_required("monitoring.view")
def security(request):
    context = {
        "hosts": selectors.posture_for(request.user),
        "alerts": selectors.open_alerts_for(request.user),
        "interval_minutes": settings.POSTURE_CHECK_INTERVAL // 60,
    }
    return render_page(request, "monitoring/security.html", context, partial="results")


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
