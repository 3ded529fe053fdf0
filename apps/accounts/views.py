from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.audit.middleware import client_ip
from apps.audit.services import refused
from apps.core.forms import refuse
from apps.core.views_util import permission_required, render_page
from apps.vms.models import VirtualMachine

from . import mfa, reauth, services, sessions, throttle
from .forms import AdminSetPasswordForm, AssignmentForm, CodeForm, OwnPasswordChangeForm, ReauthForm, UserCreateForm
from .mfa_status import mfa_enabled
from .models import RoleAssignment

User = get_user_model()


class LoginView(auth_views.LoginView):
    """The password step; throttled by django-axes (its backend refuses a locked-out user
    name unchecked, and its middleware answers with `locked_out` below). The second factor
    follows (apps.accounts.mfa.SecondFactorMiddleware sends the session to it)."""

    form_class = AuthenticationForm
    redirect_authenticated_user = True


def locked_out(request, original_response=None, credentials=None):
    """settings.AXES_LOCKOUT_CALLABLE: the sign-in page again, saying why (429)."""
    minutes = max(1, settings.LOGIN_FAILURE_WINDOW // 60)
    username = str((credentials or {}).get("username") or request.POST.get("username", ""))[:150]
    context = {
        "form": AuthenticationForm(request, initial={"username": username}),
        "locked": f"Too many failed sign-ins. Wait {minutes} minutes or ask an admin.",
        "next": reauth.safe_next(request, request.POST.get("next", "")),
    }
    return render(request, "registration/login.html", context, status=429)


@permission_required("accounts.manage")
def user_list(request):
    users = User.objects.prefetch_related("role_assignments__host", "role_assignments__vm").order_by("username")
    return render_page(request, "accounts/users.html", {"users": users, "form": UserCreateForm()})


@require_POST
@permission_required("accounts.manage")
def user_create(request):
    form = UserCreateForm(request.POST)
    if not form.is_valid():
        refused(
            actor=request.user,
            action="accounts.user.create",
            target=("user", "", request.POST.get("username", "")[:150]),
            error=_error_text(form),
        )
        users = User.objects.prefetch_related("role_assignments").order_by("username")
        return render_page(request, "accounts/users.html", {"users": users, "form": form}, status=400)
    user = services.user_create(actor=request.user, **form.cleaned_data)
    messages.success(request, f"User {user.username} created.")
    return redirect("accounts:detail", pk=user.pk)


def _error_text(form) -> str:
    """A form's errors in one line, for the audit log (never a password: errors do not echo it)."""
    return "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items())


def _user_page(request, user, form, status: int = 200, password_form=None):
    assignments = user.role_assignments.select_related("host", "vm", "vm__host")
    context = {"subject": user, "assignments": assignments, "form": form, "mfa_on": mfa_enabled(user),
               "password_form": password_form or AdminSetPasswordForm(user)}  # fmt: skip
    return render_page(request, "accounts/user.html", context, status=status)


@permission_required("accounts.manage")
def user_detail(request, pk: int):
    return _user_page(request, get_object_or_404(User, pk=pk), AssignmentForm())


@require_POST
@permission_required("accounts.manage")
def user_set_active(request, pk: int):
    user = get_object_or_404(User, pk=pk)
    active = request.POST.get("active") == "yes"
    services.user_set_active(actor=request.user, user=user, active=active)
    messages.success(request, f"{user.username} {'enabled' if active else 'disabled; their sessions were ended'}.")
    return redirect("accounts:detail", pk=user.pk)


@require_POST
@permission_required("accounts.manage")
def assignment_add(request, pk: int):
    user = get_object_or_404(User, pk=pk)
    form = AssignmentForm(request.POST)
    vm = None
    if form.is_valid() and form.cleaned_data["scope"] == "vm":
        host_name, _, vm_name = (form.cleaned_data.get("vm") or "").partition("/")
        vm = VirtualMachine.objects.filter(host__name=host_name, name=vm_name, present=True).first()
        if vm is None:
            form.add_error("vm", f"No VM {form.cleaned_data.get('vm')!r}: write it as host/vm, e.g. local/web-1.")
    if not form.is_valid():
        sent = ("role", "scope", "host", "zone", "vm")
        params = {k: str(form.data.get(k, ""))[:40] for k in sent if form.data.get(k)}
        refused(actor=request.user, action="accounts.role.assign", target=user, params=params, error=_error_text(form))
        return _user_page(request, user, form, status=400)
    data = form.cleaned_data
    services.assignment_add(
        actor=request.user,
        user=user,
        role=data["role"],
        scope=data["scope"],
        host=data.get("host"),
        zone=data.get("zone") or "",
        vm=vm,
    )
    messages.success(request, "Role assigned.")
    return redirect("accounts:detail", pk=user.pk)


@require_POST
@permission_required("accounts.manage")
def assignment_remove(request, pk: int, assignment_id: int):
    assignment = get_object_or_404(RoleAssignment, pk=assignment_id, user_id=pk)
    services.assignment_remove(actor=request.user, assignment=assignment)
    messages.success(request, "Role revoked.")
    return redirect("accounts:detail", pk=pk)


CREDENTIAL_ACTION = "accounts.user.password"


def _keep_this_session(request, user) -> None:
    """The password changed in this request: the session making it stays signed in (a new
    session hash and the new epoch), every other session of the user ends."""
    update_session_auth_hash(request, user)
    sessions.keep_this_session(request)


@require_POST
@permission_required("accounts.manage")
def user_password_set(request, pk: int):
    """An admin sets another user's password (re-authenticated: REAUTH_POLICY); all of that
    user's sessions end at once."""
    user = get_object_or_404(User, pk=pk)
    form = AdminSetPasswordForm(user, request.POST)
    if not form.is_valid():
        refuse(form, actor=request.user, action=CREDENTIAL_ACTION, target=user, perm="accounts.manage")
        return _user_page(request, user, AssignmentForm(), status=400, password_form=form)
    services.user_password_set(actor=request.user, user=user, password=form.cleaned_data["password1"])
    if user.pk == request.user.pk:
        _keep_this_session(request, user)
    messages.success(request, f"Password of {user.username} set; their other sessions were ended.")
    return redirect("accounts:detail", pk=user.pk)


def _password_page(request, form, status: int = 200):
    return render(request, "accounts/password.html", {"form": form}, status=status)


@permission_required("dashboard.view")
def password_page(request):
    """Your own password: the current one, then the new one twice."""
    return _password_page(request, OwnPasswordChangeForm(request.user))


@require_POST
@permission_required("dashboard.view")
def password_change(request):
    """Change your own password: your other sessions end at once, this one stays. Wrong
    current passwords count against the re-authentication's throttle (a stolen session
    cannot guess it here either)."""
    user, ip = request.user, client_ip(request)
    form = OwnPasswordChangeForm(user, request.POST)
    if throttle.is_locked(user.get_username(), ip, throttle.REAUTH):
        form.is_valid()
        form.errors.clear()
        form.add_error(None, f"Too many wrong passwords. Wait {settings.LOGIN_FAILURE_WINDOW // 60} minutes.")
        refused(actor=user, action=CREDENTIAL_ACTION, target=user, error="too many wrong passwords")
        return _password_page(request, form, status=429)
    if not form.is_valid():
        if "old_password" in form.errors:
            throttle.note_failure(user.get_username(), ip, throttle.REAUTH)
        refuse(form, actor=user, action=CREDENTIAL_ACTION, target=user)
        return _password_page(request, form, status=400)
    throttle.clear(user.get_username(), ip, throttle.REAUTH)
    services.user_password_set(actor=user, user=user, password=form.cleaned_data["new_password1"])
    _keep_this_session(request, user)
    messages.success(request, "Password changed; your other sessions were ended.")
    return redirect("accounts:password")


@permission_required("dashboard.view")
def reauth_confirm(request):
    """Ask for the password again (and a code, with two-factor sign-in); once confirmed, go
    back to `next` (the page of the action)."""
    next_url = reauth.safe_next(request, request.POST.get("next") or request.GET.get("next") or "")
    form = ReauthForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            reauth.confirm_password(request, form.cleaned_data["password"], form.cleaned_data.get("code", ""))
        except reauth.ReauthRefused as exc:
            form.add_error("password", exc.message)
        else:
            return redirect(next_url)
    status = 400 if request.method == "POST" else 200
    context = {"form": form, "next": next_url, "mfa_on": mfa_enabled(request.user)}
    return render(request, "accounts/reauth.html", context, status=status)


# ------------------------------------------------------------------ two-factor sign-in


@permission_required("dashboard.view")
def mfa_verify(request):
    """The second step of signing in: a TOTP code or a recovery code."""
    next_url = reauth.safe_next(request, request.POST.get("next") or request.GET.get("next") or "")
    if request.user.is_verified() or (request.method != "POST" and not mfa_enabled(request.user)):
        return redirect(next_url)  # nothing to verify (the middleware sends an unenrolled admin to enrol)
    # a code posted for a device that is gone (turned off meanwhile) is refused with the reason
    form = CodeForm(request.POST or None)
    if request.method == "POST":
        try:
            if not form.is_valid():
                raise mfa.MFARefused("Type the code.", mfa.MALFORMED)
            mfa.verify_sign_in(request, form.cleaned_data["code"])
        except mfa.MFARefused as exc:
            if exc.reason == mfa.MALFORMED and "code" not in form.cleaned_data:
                refused(actor=request.user, action="auth.mfa.verify", target=request.user, error=exc.message)
            form.add_error("code", exc.message)
        else:
            return redirect(next_url)
    status = 400 if request.method == "POST" else 200
    return render(request, "registration/mfa_verify.html", {"form": form, "next": next_url}, status=status)


def _setup_page(request, form, status: int = 200):
    user = request.user
    context = {"form": form, "next": reauth.safe_next(request, request.GET.get("next", "")), "required": False}
    if mfa_enabled(user):
        context.update(enabled=True, codes_left=mfa.recovery_codes_left(user))
    else:
        device = mfa.enrol_start(user)
        context.update(
            enabled=False,
            qr=mfa.qr_data_uri(device),
            secret=mfa.secret_for_manual_entry(device),
            required=mfa.required_for(user),
        )
    return render(request, "accounts/mfa_setup.html", context, status=status)


@permission_required("dashboard.view")
def mfa_setup(request):
    """Your own two-factor sign-in: enrol (QR code, secret, a code to confirm), or see how
    many recovery codes are left and make new ones."""
    return _setup_page(request, CodeForm())


@require_POST
@permission_required("dashboard.view")
def mfa_confirm(request):
    form = CodeForm(request.POST)
    try:
        if not form.is_valid():
            raise mfa.MFARefused("Type the 6-digit code your authenticator app shows.", mfa.MALFORMED)
        codes = mfa.enrol_confirm(request, form.cleaned_data["code"])
    except mfa.MFARefused as exc:
        if "code" not in form.cleaned_data:  # enrol_confirm audits what reached it
            refused(actor=request.user, action="auth.mfa.enrol", target=request.user, error=exc.message)
        form.add_error("code", exc.message)
        return _setup_page(request, form, status=400)
    next_url = reauth.safe_next(request, request.POST.get("next", ""))
    return render(request, "accounts/mfa_codes.html", {"codes": codes, "next": next_url, "first": True})


@require_POST
@permission_required("dashboard.view")
def mfa_recovery(request):
    codes = mfa.recovery_regenerate(actor=request.user)
    return render(request, "accounts/mfa_codes.html", {"codes": codes, "next": reverse("accounts:mfa_setup")})


@require_POST
@permission_required("accounts.manage")
def mfa_disable(request, pk: int):
    user = get_object_or_404(User, pk=pk)
    mfa.mfa_disable(actor=request.user, user=user)
    messages.success(request, f"Two-factor sign-in is off for {user.username}; they enrol again where required.")
    return redirect("accounts:detail", pk=user.pk)
