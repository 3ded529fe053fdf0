"""Small helpers shared by the views: a permission decorator every view carries, and
HTMX-aware rendering."""

from functools import wraps

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render

from apps.accounts import reauth
from apps.accounts.permissions import authorize


def permission_required(perm: str, action: str | None = None):
    """Every portal view is wrapped with this: the URL-enumeration test checks for it.
    It is the page-level check; services check again against the object. An action that
    apps.accounts.reauth.REAUTH_POLICY lists also needs a recent re-authentication: without
    one the user is sent to confirm their password first (audited)."""

    def decorate(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            authorize(request.user, perm, anywhere=True, action=action or f"page.{request.resolver_match.url_name}")
            if reauth.needs_reauth(request) and not reauth.has_recent_auth(request):
                return redirect_htmx(request, reauth.refuse(request))
            return view(request, *args, **kwargs)

        wrapped.portal_permission = perm
        return wrapped

    return decorate


def render_page(request, template: str, context: dict, partial: str | None = None, status: int = 200):
    """Render the full page, or only `partial` of it for an HTMX request."""
    name = f"{template}#{partial}" if partial and request.htmx and not request.htmx.boosted else template
    response = render(request, name, context, status=status)
    response["Vary"] = "HX-Request"
    return response


def redirect_htmx(request, url: str):
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


def job_started(request, job, message: str, back: str):
    """What a view answers once it has started a job: the job's live progress partial for
    HTMX, otherwise a message and a redirect to `back`, which shows the job."""
    if request.htmx:
        return render_page(request, "core/job.html", {"job": job}, partial="progress")
    messages.success(request, message)
    return redirect(f"{back}?job={job.pk}")
