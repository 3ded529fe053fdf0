from django.urls import path

from . import views

app_name = "monitoring"
urlpatterns = [
    path("", views.security, name="security"),
    path("run/", views.security_run, name="security_run"),
    path("lynis/", views.lynis_run, name="lynis_run"),
    path("audit-rules/", views.audit_rules, name="audit_rules"),
    path("audit-rules/install/", views.audit_rules_install, name="audit_rules_install"),
    path("training/", views.training_page, name="training"),
    path("training/acknowledge/", views.training_acknowledge, name="training_acknowledge"),
    path("plan/", views.incident_plan, name="incident_plan"),
    path("plan/save/", views.incident_plan_save, name="incident_plan_save"),
    path("plan/review/", views.incident_plan_review, name="incident_plan_review"),
]
