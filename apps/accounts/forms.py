from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import PasswordChangeForm
from django.contrib.auth.password_validation import validate_password

from apps.core.models import Host

from .models import Role, Scope

_CODE_ATTRS = {"autocomplete": "one-time-code", "inputmode": "text", "spellcheck": "false", "size": 12}


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


class OwnPasswordChangeForm(PasswordChangeForm):
    """A user changes their own password: the current one, then the new one twice (Django's form)."""

    secret_fields = ("old_password", "new_password1", "new_password2")


class AdminSetPasswordForm(forms.Form):
    """An admin sets another user's password: typed twice, checked by the password validators."""

    secret_fields = ("password1", "password2")
    password1 = forms.CharField(label="New password", strip=False,
                                widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))  # fmt: skip
    password2 = forms.CharField(label="New password again", strip=False,
                                widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))  # fmt: skip

    def __init__(self, user, *args, **kwargs):
        self.user = user
        super().__init__(*args, **kwargs)

    def clean(self):
        cleaned = super().clean()
        one, two = cleaned.get("password1"), cleaned.get("password2")
        if one and two and one != two:
            raise forms.ValidationError("The two passwords differ.")
        if one:
            validate_password(one, self.user)
        return cleaned


class ReauthForm(forms.Form):
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}), strip=False)
    # asked of users with two-factor sign-in; its shape is checked by apps.accounts.mfa
    code = forms.CharField(required=False, max_length=32, widget=forms.TextInput(attrs=_CODE_ATTRS))


class CodeForm(forms.Form):
    """A TOTP code or a recovery code (apps.accounts.mfa checks which, and its shape)."""

    code = forms.CharField(max_length=32, widget=forms.TextInput(attrs={**_CODE_ATTRS, "autofocus": True}))
