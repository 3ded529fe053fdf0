from django.urls import path

from . import views

app_name = "network"
urlpatterns = [
    path("", views.network_list, name="networks"),
    path("zones/<str:host>/create/", views.zone_create, name="zone_create"),
    path("zones/<str:host>/<str:zone>/", views.zone_detail, name="zone"),
    path("zones/<str:host>/<str:zone>/edit/", views.zone_edit, name="zone_edit"),
    path("zones/<str:host>/<str:zone>/delete/", views.zone_delete, name="zone_delete"),
    path("zones/<str:host>/<str:zone>/rules/", views.zone_rule_add, name="zone_rule_add"),
    path("vms/<str:host>/<str:name>/", views.vm_firewall, name="vm"),
    path("vms/<str:host>/<str:name>/rules/", views.vm_rule_add, name="vm_rule_add"),
    path("vms/<str:host>/<str:name>/move/", views.vm_move, name="vm_move"),
    path("vms/<str:host>/<str:name>/quarantine/", views.vm_quarantine, name="quarantine"),
    path("vms/<str:host>/<str:name>/release/", views.vm_release, name="release"),
    path("rules/<int:pk>/delete/", views.rule_delete, name="rule_delete"),
    path("firewall/<str:host>/", views.firewall_page, name="firewall"),
    path("firewall/<str:host>/apply/", views.firewall_apply, name="apply"),
    path("firewall/<str:host>/applies/<int:pk>/confirm/", views.firewall_confirm, name="confirm"),
]
