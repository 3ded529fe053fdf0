from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.audit.services import refused
from apps.core.forms import error_text, refuse
from apps.core.views_util import permission_required, render_page
from apps.vms.models import VirtualMachine

from . import exports, selectors, services
from .forms import CampaignStartForm, DecisionForm
from .models import ReviewCampaign, ReviewItem

User = get_user_model()


@permission_required("access_review.view")
def report(request):
    rows = selectors.access_report(request.user)
    if request.GET.get("format") == "csv":
        response = HttpResponse(exports.to_csv(exports.report_csv_rows(rows)), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="access-review.csv"'
        return response
    # the rows link to reviews:user as this prefix + the user's id (one reverse, not one per row)
    users_url = reverse("reviews:user", args=[0]).removesuffix("0/")
    return render_page(request, "reviews/report.html", {"rows": rows, "users_url": users_url})


@permission_required("access_review.view")
def vm_access(request, host: str, name: str):
    vm = get_object_or_404(VirtualMachine.objects.select_related("host"), host__name=host, name=name, present=True)
    holders = selectors.who_can_act_on(request.user, vm)
    return render_page(request, "reviews/vm_access.html", {"vm": vm, "holders": holders})


@permission_required("access_review.view")
def user_access(request, pk: int):
    subject = get_object_or_404(User, pk=pk)
    assignments, portal, vms = selectors.what_user_can_do(request.user, subject)
    context = {"subject": subject, "assignments": assignments, "portal": portal, "vms": vms}
    return render_page(request, "reviews/user_access.html", context)


def _campaigns_page(request, form, status=200):
    context = {"campaigns": selectors.campaigns(request.user), "form": form}
    return render_page(request, "reviews/campaigns.html", context, status=status)


@permission_required("access_review.view")
def campaign_list(request):
    return _campaigns_page(request, CampaignStartForm())


@require_POST
@permission_required("access_review.manage")
def campaign_start(request):
    form = CampaignStartForm(request.POST)
    if not form.is_valid():
        refuse(form, actor=request.user, action="reviews.campaign.start", perm="access_review.manage")
        return _campaigns_page(request, form, status=400)
    campaign = services.campaign_start(actor=request.user, name=form.cleaned_data["name"],
                                       users=list(form.cleaned_data["users"]))  # fmt: skip
    messages.success(request, f"Campaign {campaign.name} started: {campaign.items.count()} assignments to review.")
    return redirect("reviews:campaign", pk=campaign.pk)


def _campaign_page(request, campaign, form=None, status=200):
    items = selectors.campaign_items(request.user, campaign)
    context = {"campaign": campaign, "items": items, "form": form or DecisionForm(),
               "undecided": sum(not i.decision for i in items)}  # fmt: skip
    return render_page(request, "reviews/campaign.html", context, status=status)


@permission_required("access_review.view")
def campaign_detail(request, pk: int):
    return _campaign_page(request, get_object_or_404(ReviewCampaign, pk=pk))


@require_POST
@permission_required("access_review.manage")
def campaign_decide(request, pk: int, item_id: int):
    item = get_object_or_404(ReviewItem.objects.select_related("campaign"), pk=item_id, campaign_id=pk)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        refuse(form, actor=request.user, action="reviews.campaign.decide", target=item.campaign,
               perm="access_review.manage")  # fmt: skip
        messages.error(request, error_text(form))
        return _campaign_page(request, item.campaign, form, status=400)
    services.campaign_decide(actor=request.user, item=item, **form.cleaned_data)
    decision = form.cleaned_data["decision"]
    messages.success(request, f"{item.username}: {item.role} of {item.scope_label} marked {decision}.")
    return redirect("reviews:campaign", pk=pk)


@require_POST
@permission_required("access_review.manage")
def campaign_close(request, pk: int):
    campaign = get_object_or_404(ReviewCampaign, pk=pk)
    if request.POST.get("confirm") != campaign.name:
        refused(actor=request.user, action="reviews.campaign.close", target=campaign,
                         error="the campaign's name was not typed to confirm")  # fmt: skip
        messages.error(request, "Type the campaign's name to confirm: closing applies the revocations.")
        return _campaign_page(request, campaign, status=400)
    campaign = services.campaign_close(actor=request.user, campaign=campaign)
    digest = campaign.report_sha256
    messages.success(request, f"Campaign {campaign.name} closed; its report is frozen (SHA-256 {digest}).")
    return redirect("reviews:campaign", pk=pk)


@permission_required("access_review.view")
def campaign_export(request, pk: int, fmt: str):
    if fmt not in ("csv", "pdf"):
        raise Http404("No such format.")
    campaign = get_object_or_404(ReviewCampaign, pk=pk)
    selectors.campaign_items(request.user, campaign)  # the same check as the page
    text = services.campaign_report_checked(campaign)
    if fmt == "csv":
        response = HttpResponse(text, content_type="text/csv")
    else:
        response = HttpResponse(exports.campaign_pdf(campaign), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="access-review-{campaign.pk}.{fmt}"'
    response["X-Report-SHA256"] = campaign.report_sha256
    return response
