from django.urls import path

from . import views

app_name = "accounts"
urlpatterns = [
    path("", views.user_list, name="list"),
    path("new/", views.user_create, name="create"),
    path("<int:pk>/", views.user_detail, name="detail"),
    path("<int:pk>/active/", views.user_set_active, name="set_active"),
    path("<int:pk>/assignments/", views.assignment_add, name="assignment_add"),
    path("<int:pk>/assignments/<int:assignment_id>/delete/", views.assignment_remove, name="assignment_remove"),
    path("<int:pk>/password/", views.user_password_set, name="password_set"),
    path("password/", views.password_page, name="password"),
    path("password/change/", views.password_change, name="password_change"),
    path("reauth/", views.reauth_confirm, name="reauth"),
    path("two-factor/", views.mfa_setup, name="mfa_setup"),
    path("two-factor/confirm/", views.mfa_confirm, name="mfa_confirm"),
    path("two-factor/recovery-codes/", views.mfa_recovery, name="mfa_recovery"),
    path("two-factor/verify/", views.mfa_verify, name="mfa_verify"),
    path("<int:pk>/two-factor/disable/", views.mfa_disable, name="mfa_disable"),
]
