from django import forms

from apps.core.forms import error_text  # noqa: F401  (the monitoring views' name)

MAX_STEP = 10000


class IncidentPlanForm(forms.Form):
    detect = forms.CharField(label="1. Detect", max_length=MAX_STEP, strip=True)
    contain = forms.CharField(label="2. Contain", max_length=MAX_STEP, strip=True)
    recover = forms.CharField(label="3. Recover", max_length=MAX_STEP, strip=True)
    review = forms.CharField(label="4. Review", max_length=MAX_STEP, strip=True)
    contacts = forms.CharField(label="Contacts", max_length=MAX_STEP, required=False, strip=True)
    version = forms.IntegerField(min_value=0, widget=forms.HiddenInput, help_text="the version edited (0: none yet)")


class AuditRulesInstallForm(forms.Form):
    sha256 = forms.RegexField(regex=r"^[0-9a-f]{64}$", error_messages={"invalid": "Not the digest of a diff."})
    confirm = forms.BooleanField(required=True, error_messages={"required": "Confirm that you read the diff."})


class TrainingAckForm(forms.Form):
    item = forms.SlugField(max_length=40)
