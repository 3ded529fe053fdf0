from django.urls import path

from . import views

app_name = "encryption"
urlpatterns = [
    path("", views.index, name="index"),
    path("disks/<int:pk>/", views.disk_detail, name="disk"),
    path("disks/new/", views.disk_create, name="create"),
    path("disks/encrypt-existing/", views.disk_encrypt_existing, name="encrypt_existing"),
    path("disks/<int:pk>/change-key/", views.disk_change_key, name="change_key"),
    path("disks/<int:pk>/header-backup/", views.disk_header_backup, name="header_backup"),
    path("disks/<int:pk>/escrow/", views.escrow_export, name="escrow_export"),
    path("disks/<int:pk>/recovery-test/", views.recovery_test, name="recovery_test"),
    path("disks/<int:pk>/restore-key/", views.key_restore, name="key_restore"),
    path("disks/<int:pk>/header-backups/destroy-stale/", views.header_backups_destroy_stale, name="destroy_stale"),
    path("vms/<str:host>/<str:name>/start/", views.vm_start, name="vm_start"),
    path("vms/<str:host>/<str:name>/stop/", views.vm_stop, name="vm_stop"),
    path("vms/<str:host>/<str:name>/unlock/", views.vm_unlock, name="vm_unlock"),
    path("vms/<str:host>/<str:name>/unlock/policy/", views.vm_unlock_policy, name="vm_unlock_policy"),
    path("vms/<str:host>/<str:name>/unlock/start/", views.vm_start_manual, name="vm_start_manual"),
    path("vms/<str:host>/<str:name>/unlock/passphrase/", views.vm_passphrase_change, name="vm_passphrase_change"),
    path("store/unseal/", views.store_unseal, name="unseal"),
    path("store/seal/", views.store_seal, name="seal"),
    path("store/rotate/", views.kek_rotate, name="rotate"),
]
