"""Photo -> model input and back. Shared by training and serving; Pillow + numpy, no torch.

A photo is fitted into the model's ``height x width`` frame by *letterboxing*: it is scaled,
keeping its aspect ratio, until it touches the frame, centred, and the rest is filled with
``pad_value``. Nothing is stretched or cropped, so the car's shape is what the camera saw; the
price is grey bars when a photo's aspect ratio differs from the frame's (2:1 by default, the
median of the training photos is 2.14:1). The valid region (``box``) travels with the array so
that losses and metrics ignore the bars and the reconstruction can be cut back out of them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

from ml.config import ModelConfig
from ml.decode import BACKGROUND, ImageDecodeError, image_decode

__all__ = ["DECODE_ERRORS", "ImageDecodeError", "Prepared", "enlarge", "fit_box", "open_image", "prepare", "to_image"]

# Decoding itself lives in ml/decode.py (image_decode), which raises one ImageDecodeError (a ValueError) for
# every kind of bad file. This tuple of what Pillow raises is kept for code that still calls Image.open itself.
DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error)


@dataclass(frozen=True)
class Prepared:
    """One image ready for the model.

    ``array`` is float32 ``[C, H, W]`` in [0, 1]; ``box`` is ``(left, top, right, bottom)`` of the
    photo inside the frame, in model pixels (right/bottom exclusive).
    """

    array: np.ndarray
    box: tuple[int, int, int, int]

    def mask(self) -> np.ndarray:
        """``[H, W]`` float32: 1 on the photo, 0 on the letterbox bars."""
        return box_mask(self.box, self.array.shape[1], self.array.shape[2])


def box_mask(box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.float32)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = 1.0
    return mask


def open_image(source: str | bytes | BinaryIO | Image.Image) -> Image.Image:
    """Decode a photo fully (``ml.decode.image_decode``): upright, 8-bit sRGB RGB, transparency on white.

    Raises ``ml.decode.ImageDecodeError`` for data that is not such a picture.
    """
    return image_decode(source).image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (L, LA, P with transparency, RGBA, CMYK, I;16, ...) -> RGB, for an image already decoded.

    No EXIF orientation and no ICC conversion: files go through ``ml.decode.image_decode``.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greyscale: rescale to 8 bits instead of clipping to white.
        values = np.asarray(image, dtype=np.float64)
        span = float(values.max() - values.min()) or 1.0
        image = Image.fromarray(((values - values.min()) / span * 255).astype(np.uint8))
    return image.convert("RGB")


def fit_box(size: tuple[int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """Where a ``size = (w, h)`` photo lands in a ``height x width`` frame, keeping its aspect."""
    src_w, src_h = size
    scale = min(width / src_w, height / src_h)
    new_w = min(width, max(1, round(src_w * scale)))
    new_h = min(height, max(1, round(src_h * scale)))
    left = (width - new_w) // 2
    top = (height - new_h) // 2
    return left, top, left + new_w, top + new_h


def prepare(source: str | bytes | BinaryIO | Image.Image, config: ModelConfig) -> Prepared:
    """Any photo -> letterboxed model input (see module docstring).

    Decoded by ``ml.decode.image_decode`` at no more than the size the frame needs (a large JPEG at 1/2..1/8
    scale). Raises ``ml.decode.ImageDecodeError`` for a file that is not a usable picture.
    """
    decoded = image_decode(source, reduce_to=(config.width, config.height))
    image = decoded.image
    # The box from the full size: a whole-factor reduction rounds the sides and would shift the aspect slightly.
    left, top, right, bottom = fit_box((decoded.width, decoded.height), config.height, config.width)
    # reducing_gap: resample huge photos in two steps (fast box reduction, then bicubic); the
    # result is indistinguishable at these sizes and a 24 MP photo takes milliseconds.
    resized = image.resize((right - left, bottom - top), Image.Resampling.BICUBIC, reducing_gap=3.0)
    frame = np.full((config.height, config.width, 3), config.pad_value, dtype=np.float32)
    frame[top:bottom, left:right] = np.asarray(resized, dtype=np.float32) / 255.0
    array = frame.transpose(2, 0, 1)
    if config.channels == 1:
        array = array.mean(axis=0, keepdims=True)
    return Prepared(array=np.ascontiguousarray(array), box=(left, top, right, bottom))


def to_image(array: np.ndarray, box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """Model output ``[C, H, W]`` in [0, 1] -> an RGB picture, cut to ``box`` when given."""
    if array.ndim != 3:
        raise ValueError(f"expected [C, H, W], got shape {array.shape}")
    pixels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    image = Image.fromarray(pixels, "RGB")
    return image.crop(box) if box is not None else image


def enlarge(image: Image.Image, longest: int = 512) -> Image.Image:
    """Upscale a small model-sized picture for display, keeping its aspect ratio."""
    scale = longest / max(image.size)
    if scale <= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
