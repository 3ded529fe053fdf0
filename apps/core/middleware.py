from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import render

from .errors import PortalError

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)


class ContentSecurityPolicyMiddleware:
    """No inline script or style can run: everything comes from our own static files."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", CSP)
        return response


class PortalErrorMiddleware:
    """Turns the project's own errors into a readable page (or an HTMX toast), never a 500."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, PermissionDenied):
            return error_response(request, str(exception) or "You may not do this.", 403)
        if isinstance(exception, PortalError):
            return error_response(request, exception.message, exception.status)
        return None


def error_response(request, message: str, status: int):
    if getattr(request, "htmx", False):
        response = render(request, "partials/_toast.html", {"level": "error", "message": message}, status=status)
        # htmx ignores 4xx bodies by default; retarget the toast area so the message shows.
        response["HX-Retarget"] = "#toasts"
        response["HX-Reswap"] = "afterbegin"
        return response
    if status < 500 and request.method == "POST" and status not in (403, 404):
        messages.error(request, message)
    return render(request, "error.html", {"message": message, "status": status}, status=status)
