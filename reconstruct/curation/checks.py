"""Checks computed when a photo arrives in the training set. Pure functions (Pillow + numpy).

Nothing here touches the database or storage: the services feed bytes in and store the results.
The perceptual hashes are 64-bit integers; two photos whose hashes differ in only a few bits look
alike to a person (same photo resized, recompressed, slightly cropped or re-coloured).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ml.decode import DecodedImage, ImageDecodeError, image_decode
from reconstruct.images import DATASET_FORMATS, STORED_FORMATS

HASH_BITS = 64


# The size the checks look at: hashes need 32x32, the greyscale test 64x64, the admin thumbnail 240x120 and
# car-likeness the model's frame; a large photo is decoded at a fraction of its size (ml.decode: reduce_to).
ANALYSIS_SIZE = (512, 512)


class CheckError(ValueError):
    """The bytes are not a photo we can keep; the message says why, in words for a person; ``code`` is
    ``ml.decode.ImageDecodeError``'s (``not_an_image``, ``corrupt``, ...) or ``damaged`` / ``too_large``."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


def content_hash(data: bytes) -> str:
    """SHA-256 of the exact bytes, hex: equal for exact copies only."""
    return hashlib.sha256(data).hexdigest()


def _grey(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    # Box-filter down to a few pixels: the hash then depends on the picture's layout, not on its
    # resolution, JPEG noise or sharpening.
    small = image.convert("L").resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64)


def _bits_to_int(bits: np.ndarray) -> int:
    value = 0
    for bit in bits.ravel():
        value = (value << 1) | int(bit)
    return value


def dhash(image: Image.Image) -> int:
    """Difference hash (Krawetz): does brightness rise or fall between neighbours of a 9x8 thumbnail."""
    pixels = _grey(image, (9, 8))
    return _bits_to_int(pixels[:, 1:] > pixels[:, :-1])


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT32 = _dct_matrix(32)


def phash(image: Image.Image) -> int:
    """Perceptual hash: signs of the 8x8 lowest frequencies of a 32x32 DCT against their median.

    The lowest frequencies describe the picture's large shapes, which survive resizing and
    recompression; the DC term (overall brightness) is left out of the median.
    """
    pixels = _grey(image, (32, 32))
    low = (_DCT32 @ pixels @ _DCT32.T)[:8, :8]
    return _bits_to_int(low > np.median(low.ravel()[1:]))


def hash_to_hex(value: int) -> str:
    """A 64-bit hash as the 16 hex digits stored in the database."""
    return f"{value:016x}"


def hamming(a: int, b: int) -> int:
    """How many of the 64 bits differ."""
    return (a ^ b).bit_count()


def _popcount64(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values).astype(np.int64)
    # numpy 1.26 (the Lambda stack): count bits byte by byte through a table.
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[values.view(np.uint8).reshape(-1, 8)].sum(axis=1)


def hamming_many(value: int, others: np.ndarray) -> np.ndarray:
    """Hamming distance from ``value`` to each uint64 in ``others`` (vectorised)."""
    return _popcount64(np.bitwise_xor(others, np.uint64(value)))


def is_too_small(width: int, height: int, min_width: int, min_height: int) -> bool:
    """Smaller than ``min_width x min_height`` in both directions: the model would have to enlarge it.

    One side may be short (a wide photo is letterboxed), as long as the other fills the frame.
    """
    return width < min_width and height < min_height


def is_extreme_aspect(width: int, height: int, min_aspect: float, max_aspect: float) -> bool:
    """Width / height outside ``[min_aspect, max_aspect]`` (tall portraits, panoramic strips)."""
    aspect = width / max(1, height)
    return aspect < min_aspect or aspect > max_aspect


def is_greyscale(image: Image.Image, tolerance: float = 10.0) -> bool:
    """No colour anywhere: on a 64x64 thumbnail, 99% of the pixels have their red, green and blue
    within ``tolerance`` grey levels of each other.

    A greyscale photo saved as RGB JPEG carries a little chroma noise, hence a tolerance; a silver
    car on a white background passes only if nothing in the picture (plates, lights, sky) has colour.
    On the 4,000 photos in ../shared/data/cars this flags 1.0%.
    """
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return True
    rgb = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BOX), dtype=np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return float(np.percentile(spread, 99)) < tolerance


@dataclass(frozen=True)
class PhotoFacts:
    """What the checks learned about one photo (everything but the database-dependent checks)."""

    content_hash: str
    format: str
    extension: str
    width: int
    height: int
    phash: int
    # Hash of the mirrored picture: a flipped copy of a photo is a near duplicate too.
    phash_mirrored: int
    greyscale: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "content_hash": self.content_hash,
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "phash": hash_to_hex(self.phash),
            "greyscale": self.greyscale,
        }


def decode_photo(
    data: bytes, max_pixels: int, reduce_to: tuple[int, int] | None = None, mirror: bool = False
) -> DecodedImage:
    """``ml.decode.image_decode`` for the training set (JPEG, PNG or WebP only: a stored file is always the exact
    bytes its content hash names, so it must be a format browsers show), or raise ``CheckError`` saying why not."""
    try:
        return image_decode(data, max_pixels=max_pixels, formats=DATASET_FORMATS, reduce_to=reduce_to, mirror=mirror)
    except ImageDecodeError as error:
        raise CheckError(error.message, error.code) from None


def examine(data: bytes, max_pixels: int = 40_000_000) -> tuple[PhotoFacts, Image.Image]:
    """Decode ``data`` once and compute the hashes and pixel checks. Raises ``CheckError``.

    Returns the facts and the picture as a person sees it (upright, sRGB, on white), at most about
    ANALYSIS_SIZE: enough for hashes, thumbnails and car-likeness; the full size is in the facts.
    """
    decoded = decode_photo(data, max_pixels, reduce_to=ANALYSIS_SIZE)
    upright = decoded.image
    facts = PhotoFacts(
        content_hash=content_hash(data),
        format=decoded.format,
        extension=STORED_FORMATS[decoded.format][1],
        width=decoded.width,
        height=decoded.height,
        phash=phash(upright),
        phash_mirrored=phash(ImageOps.mirror(upright)),
        greyscale=is_greyscale(upright),
    )
    return facts, upright


def thumbnail(image: Image.Image, size: tuple[int, int] = (240, 120)) -> bytes:
    """A small JPEG for admin lists."""
    small = image.convert("RGB")
    small.thumbnail(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=80)
    return out.getvalue()
