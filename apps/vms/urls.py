from django.urls import path

from . import views

app_name = "vms"
urlpatterns = [
    path("", views.vm_list, name="list"),
    path("<str:host>/<str:name>/", views.vm_detail, name="detail"),
    path("<str:host>/<str:name>/history/", views.vm_history, name="history"),
    path("<str:host>/<str:name>/history/<int:revision>/", views.vm_revision, name="revision"),
    path("<str:host>/<str:name>/action/", views.vm_action, name="action"),
    path("<str:host>/<str:name>/console/", views.vm_console, name="console"),
    path("<str:host>/<str:name>/console/token/", views.vm_console_token, name="console_token"),
    path("<str:host>/<str:name>/snapshots/", views.snapshot_create, name="snapshot_create"),
    path("<str:host>/<str:name>/snapshots/<str:snapshot>/delete/", views.snapshot_delete, name="snapshot_delete"),
]
