"""What the site keeps of an image file, shared by uploads and the training set."""

from __future__ import annotations

# Formats a browser shows as they are: Pillow's format name -> (the format a copy is saved in, file extension).
# Uploads in any other format Pillow reads (BMP, TIFF, GIF...) are stored as PNG; the training set refuses them.
STORED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("JPEG", "jpg"),
    "MPO": ("JPEG", "jpg"),
    "PNG": ("PNG", "png"),
    "WEBP": ("WEBP", "webp"),
}
