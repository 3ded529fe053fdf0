from django.urls import path

from . import views

app_name = "monitoring"
urlpatterns = [
    path("", views.security, name="security"),
    path("run/", views.security_run, name="security_run"),
    path("lynis/", views.lynis_run, name="lynis_run"),
]
