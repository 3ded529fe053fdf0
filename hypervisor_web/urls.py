from django.contrib.auth import views as auth_views
from django.urls import include, path

from apps.accounts.views import LoginView
from apps.core import views as core_views
from apps.monitoring import views as monitoring_views

urlpatterns = [
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", core_views.dashboard, name="dashboard"),
    path("jobs/", core_views.job_list, name="jobs"),
    path("jobs/<int:pk>/", core_views.job_detail, name="job"),
    path("vms/", include("apps.vms.urls")),
    path("profiles/", include("apps.profiles.urls")),
    path("storage/", include("apps.storage.urls")),
    path("network/", include("apps.network.urls")),
    path("encryption/", include("apps.encryption.urls")),
    path("backups/", include("apps.backups.urls")),
    path("audit/", include("apps.audit.urls")),
    path("access/", include("apps.reviews.urls")),
    path("users/", include("apps.accounts.urls")),
    path("security/", include("apps.monitoring.urls")),
    path("metrics", monitoring_views.metrics, name="metrics"),
]

handler403 = "apps.core.views_errors.forbidden"
handler404 = "apps.core.views_errors.not_found"
