from django.urls import path

from . import views

app_name = "profiles"
urlpatterns = [
    path("", views.profile_list, name="list"),
    path("import/", views.profile_import, name="import"),
    path("vm/new/", views.vm_new, name="vm_new"),
    path("vm/create/", views.vm_create, name="vm_create"),
    path("vm/<str:host>/<str:name>/resources/", views.vm_resources, name="vm_resources"),
    path("vm/<str:host>/<str:name>/delete/", views.vm_delete, name="vm_delete"),
    path("p/<str:name>/", views.profile_detail, name="detail"),
    path("p/<str:name>/save/", views.profile_save, name="save"),
    path("p/<str:name>/export/", views.profile_export, name="export"),
]
