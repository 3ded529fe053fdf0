import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hypervisor_web.settings.dev")

app = Celery("hypervisor_web")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
