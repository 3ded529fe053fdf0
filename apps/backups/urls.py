from django.urls import path

from . import views

app_name = "backups"

urlpatterns = [
    path("", views.index, name="index"),
    path("run/", views.backup_now, name="backup_now"),
    path("runs/<int:pk>/restore/", views.restore, name="restore"),
    path("runs/<int:pk>/restore-in-place/", views.restore_in_place, name="restore_in_place"),
    path("runs/<int:pk>/verify/", views.verify, name="verify"),
    path("repositories/<int:pk>/prune/", views.prune, name="prune"),
    path("policies/new/", views.policy_create, name="policy_create"),
    path("policies/<int:pk>/", views.policy_update, name="policy_update"),
]
