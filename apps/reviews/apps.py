from django.apps import AppConfig


class ReviewsConfig(AppConfig):
    name = "apps.reviews"
    label = "reviews"
    verbose_name = "Access reviews"

    def ready(self):
        from . import summaries  # noqa: F401  (keeps the per-user activity summaries as events are recorded)
