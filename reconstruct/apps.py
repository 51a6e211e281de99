from django.apps import AppConfig


class ReconstructConfig(AppConfig):
    name = "reconstruct"
    label = "reconstruct"
    verbose_name = "Reconstructions"

    def ready(self) -> None:
        from django.conf import settings
        from PIL import Image

        from reconstruct import signals  # noqa: F401  (connects the receivers)

        # Pillow refuses to decode more than twice this many pixels anywhere in the process (the
        # upload form checks the exact limit first, with a friendlier message).
        Image.MAX_IMAGE_PIXELS = settings.RECONSTRUCT_MAX_IMAGE_PIXELS
