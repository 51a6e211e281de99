from django.apps import AppConfig


class CurationConfig(AppConfig):
    name = "reconstruct.curation"
    label = "curation"
    verbose_name = "Training data and models"

    def ready(self) -> None:
        from reconstruct.curation import signals  # noqa: F401  (connects the receivers)
