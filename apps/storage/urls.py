from django.urls import path

from . import views

app_name = "storage"
urlpatterns = [
    path("", views.pool_list, name="pools"),
    path("alerts/", views.alert_list, name="alerts"),
    path("alerts/<int:pk>/ack/", views.alert_acknowledge, name="alert_ack"),
    path("settings/", views.settings_page, name="settings"),
    path("settings/save/", views.settings_save, name="settings_save"),
    path("pools/<str:host>/<str:pool>/", views.pool_detail, name="pool"),
    path("pools/<str:host>/<str:pool>/limits/", views.pool_limits, name="pool_limits"),
    path("vms/<str:host>/<str:name>/", views.vm_storage, name="vm"),
    path("vms/<str:host>/<str:name>/quota/", views.quota_set, name="quota_set"),
    path("vms/<str:host>/<str:name>/quota/expand/", views.quota_expand, name="quota_expand"),
    path("vms/<str:host>/<str:name>/volumes/", views.volume_create, name="volume_create"),
    path("vms/<str:host>/<str:name>/disks/<str:target>/resize/", views.volume_resize, name="volume_resize"),
    path("vms/<str:host>/<str:name>/disks/<str:target>/delete/", views.volume_delete, name="volume_delete"),
]
