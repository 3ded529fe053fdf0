from django.urls import path

from . import views

app_name = "reviews"
urlpatterns = [
    path("", views.report, name="report"),
    path("users/<int:pk>/", views.user_access, name="user"),
    path("vms/<str:host>/<str:name>/", views.vm_access, name="vm"),
    path("campaigns/", views.campaign_list, name="campaigns"),
    path("campaigns/new/", views.campaign_start, name="campaign_start"),
    path("campaigns/<int:pk>/", views.campaign_detail, name="campaign"),
    path("campaigns/<int:pk>/items/<int:item_id>/", views.campaign_decide, name="campaign_decide"),
    path("campaigns/<int:pk>/close/", views.campaign_close, name="campaign_close"),
    path("campaigns/<int:pk>/export.<str:fmt>", views.campaign_export, name="campaign_export"),
]
