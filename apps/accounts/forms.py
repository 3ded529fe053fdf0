from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.signals import user_login_failed

from apps.audit.middleware import client_ip
from apps.core.models import Host

from . import throttle
from .models import Role, Scope


class ThrottledAuthenticationForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "locked": "Too many failed sign-ins. Wait 15 minutes or ask an admin.",
    }

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        ip = client_ip(self.request) if self.request else None
        if throttle.is_locked(username, ip):
            # refused before the password is checked: the same signal as a wrong password,
            # with the reason (apps.audit.auth_events records it as a denial)
            user_login_failed.send(
                sender=__name__, credentials={"username": username}, request=self.request, throttled=True
            )
            raise forms.ValidationError(self.error_messages["locked"], code="locked")
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            throttle.note_failure(username, ip)
            raise
        throttle.clear(username, ip)
        return cleaned


class UserCreateForm(forms.Form):
    username = forms.RegexField(
        regex=r"^[A-Za-z0-9_.@-]{2,150}$",
        max_length=150,
        error_messages={"invalid": "Use 2-150 letters, digits and . _ @ -"},
    )
    email = forms.EmailField(required=False)
    password = forms.CharField(widget=forms.PasswordInput, min_length=12)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)

    def clean_username(self):
        username = self.cleaned_data["username"]
        if get_user_model().objects.filter(username__iexact=username).exists():
            raise forms.ValidationError("A user with this name already exists.")
        return username

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("password"):
            user = get_user_model()(username=cleaned.get("username", ""), email=cleaned.get("email", ""))
            validate_password(cleaned["password"], user)
        return cleaned


class AssignmentForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
    scope = forms.ChoiceField(choices=Scope.choices)
    host = forms.ModelChoiceField(queryset=Host.objects.all(), required=False)
    zone = forms.RegexField(regex=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", required=False)
    vm = forms.CharField(required=False, help_text="host/vm, e.g. local/web-1")


class ReauthForm(forms.Form):
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}), strip=False)
