from django import forms
from django.contrib.auth import get_user_model

from .models import ReviewItem


class CampaignStartForm(forms.Form):
    name = forms.CharField(label="Name", max_length=120)
    users = forms.ModelMultipleChoiceField(
        label="Users (none chosen: every user)",
        queryset=get_user_model().objects.order_by("username"),
        required=False,
        to_field_name="username",
    )


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(
        label="Decision", choices=[(ReviewItem.Decision.KEEP, "keep"), (ReviewItem.Decision.REVOKE, "revoke")]
    )
    comment = forms.CharField(label="Comment", max_length=500)
