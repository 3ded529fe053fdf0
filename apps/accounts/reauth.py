"""Sudo mode: sensitive actions (reveal or export a key, change a passphrase, unseal a key
store) need the password typed again within settings.REAUTH_MAX_AGE seconds.

    from apps.accounts.reauth import recent_auth_required

    @require_POST
    @permission_required("encryption.keys")
    @recent_auth_required
    def escrow_export(request, pk): ...

A view without a recent re-authentication sends the browser to the re-auth form (HTMX:
HX-Redirect), which comes back to `next` (the page the action was on) once confirmed.
Services stay free of requests: this is a view-level check, like the CSRF token.
"""

from __future__ import annotations

import time
from functools import wraps
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib.auth import authenticate
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from apps.audit.middleware import client_ip
from apps.audit.services import record
from apps.core.errors import PortalError
from apps.core.views_util import permission_required

from . import throttle

SESSION_KEY = "portal_reauth_at"


class ReauthRequired(PortalError):
    status = 403


def has_recent_auth(request) -> bool:
    at = request.session.get(SESSION_KEY)
    return isinstance(at, (int, float)) and 0 <= time.time() - at <= settings.REAUTH_MAX_AGE


def mark_recent_auth(request) -> None:
    request.session[SESSION_KEY] = time.time()


def require_recent_auth(request) -> None:
    """Raise ReauthRequired unless the user typed their password in the last REAUTH_MAX_AGE s."""
    if not has_recent_auth(request):
        raise ReauthRequired("Confirm your password first: this action needs a recent sign-in.")


def _safe_next(request, candidate: str) -> str:
    if candidate and url_has_allowed_host_and_scheme(candidate, {request.get_host()}, request.is_secure()):
        return candidate
    return reverse("dashboard")


def reauth_url(request) -> str:
    back = request.headers.get("HX-Current-URL") or request.headers.get("Referer") or request.get_full_path()
    if request.method != "GET" and back == request.get_full_path():
        back = ""
    return f"{reverse('accounts:reauth')}?{urlencode({'next': _safe_next(request, back)})}"


def recent_auth_required(view):
    """Decorator: without a recent re-authentication, send the user to confirm their password."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not has_recent_auth(request):
            url = reauth_url(request)
            if getattr(request, "htmx", False):
                response = HttpResponse(status=204)
                response["HX-Redirect"] = url
                return response
            return redirect(url)
        return view(request, *args, **kwargs)

    return wrapped


class ReauthForm(forms.Form):
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}), strip=False)


@permission_required("dashboard.view")
def reauth_view(request):
    """Ask for the password again; on success mark the session and go back to `next`."""
    next_url = _safe_next(request, request.POST.get("next") or request.GET.get("next") or "")
    form = ReauthForm(request.POST or None)
    username, ip = request.user.get_username(), client_ip(request)
    if request.method == "POST" and form.is_valid():
        if throttle.is_locked(username, ip):  # the sign-in throttle: no password guessing here either
            record(actor=request.user, action="auth.reauth", target=request.user, outcome="denied", error="throttled")
            form.add_error("password", "Too many wrong passwords. Wait 15 minutes.")
        else:
            user = authenticate(request, username=username, password=form.cleaned_data["password"])
            if user is not None and user.pk == request.user.pk:
                throttle.clear(username, ip)
                mark_recent_auth(request)
                record(actor=request.user, action="auth.reauth", target=request.user, outcome="success")
                return redirect(next_url)
            throttle.note_failure(username, ip)
            record(
                actor=request.user, action="auth.reauth", target=request.user, outcome="failed", error="wrong password"
            )
            form.add_error("password", "That is not your password.")
    status = 400 if request.method == "POST" else 200
    return render(request, "accounts/reauth.html", {"form": form, "next": next_url}, status=status)
