from django.apps import AppConfig


class CurationConfig(AppConfig):
    name = "reconstruct.curation"
    label = "curation"
    verbose_name = "Training data and models"
