"""One way to decode an image file, for every path that takes one in (uploads, the training set, training, evaluation).

``image_decode`` turns untrusted bytes into the picture a person sees: an 8-bit sRGB RGB image, upright, on white.
In order, and with bounded memory:

1. the header is read and the pixel count checked against ``max_pixels`` *before* any pixel is decoded (a 12 KB PNG
   can declare 100 megapixels);
2. the first frame only is decoded (MPO from phones, animated GIF/WebP/PNG); a JPEG needed only small is decoded at
   1/2, 1/4 or 1/8 scale by libjpeg (``draft``), other formats are box-reduced by a whole factor right after decoding,
   so every later step works on the small picture;
3. 16-bit and 32-bit greyscale is stretched to 8 bits (its darkest value -> 0, its brightest -> 255), never clipped;
4. transparency is composited on white (the studio background of most car photos);
5. an embedded ICC profile (Display P3 from phones, Adobe RGB, a CMYK press profile) is converted to sRGB with
   littleCMS (``PIL.ImageCms``, perceptual intent); a broken profile is ignored;
6. the EXIF orientation is applied; an unreadable EXIF block is ignored (the picture is kept as stored).

Everything that goes wrong raises one exception, :class:`ImageDecodeError`, with a machine ``code`` and a message that
says, for a person, what is wrong and what is accepted. Torch-free and Django-free.
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageCms

DEFAULT_MAX_PIXELS = 100_000_000
# Pixel modes whose embedded profile ``image_decode(to_srgb=False)`` leaves unapplied (an RGB profile on RGB pixels);
# any other picture is converted to sRGB whatever the caller asks.
PROFILE_KEPT_MODES = ("RGB", "RGBA")
# Pillow gives a freed picture's memory back to the system and faults fresh pages in for the next one: of the ~160 ms
# of CPU a 12-megapixel phone photo (EXIF orientation 6) costs its upload, ~20 went to those page faults. Pillow
# keeps up to this many freed 16 MB blocks for reuse instead (its own arena cache, ``PILLOW_BLOCKS_MAX``), which
# bounds what a process keeps to 64 MB. Set when this module is imported, unless PILLOW_BLOCKS_MAX says otherwise.
PILLOW_BLOCKS_CACHED = 4
if "PILLOW_BLOCKS_MAX" not in os.environ:
    Image.core.set_blocks_max(PILLOW_BLOCKS_CACHED)
# White: transparent pixels become the studio background most car photos have.
BACKGROUND = (255, 255, 255)
ORIENTATION_TAG = 0x0112  # EXIF

# What Pillow raises for bytes it cannot decode, depending on the format and where the file breaks: not an image
# (UnidentifiedImageError, an OSError), truncated or corrupt data (OSError, SyntaxError, EOFError, ValueError,
# IndexError, struct.error, and a few decoders' TypeError/KeyError/ZeroDivisionError/MemoryError on hostile
# headers). Only this module catches them; everything else catches ImageDecodeError.
_PILLOW_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    EOFError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    MemoryError,
)

# Pillow's own names of formats, as people know them.
FORMAT_NAMES = {"JPEG": "JPEG", "MPO": "JPEG (MPO)", "WEBP": "WebP", "TIFF": "TIFF", "AVIF": "AVIF", "GIF": "GIF"}
# Bytes per pixel of Pillow's in-memory modes (Storage.c): 32-bit cells for every multi-band mode and I/F.
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# EXIF orientation o followed by a left-right mirror is orientation _MIRRORED[o].
_MIRRORED = {1: 2, 2: 1, 3: 4, 4: 3, 5: 6, 6: 5, 7: 8, 8: 7}
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageDecodeError(ValueError):
    """The bytes are not a picture we can use. ``code`` is for programs, ``str(error)`` for people.

    Codes: ``empty`` (no bytes), ``not_an_image`` (text, SVG, HTML, PDF, a zip...), ``unsupported_format`` (an image
    format outside ``formats``), ``too_many_pixels`` (over ``max_pixels``, read from the header), ``too_small``
    (a side under ``min_side``), ``corrupt`` (damaged or cut short).
    """

    def __init__(self, code: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail  # what the decoder said, for logs


@dataclass(frozen=True)
class DecodedImage:
    """A decoded picture and what the file said about it.

    ``image``: mode RGB, 8 bits, sRGB, upright, opaque; full size, or reduced by a whole factor when
    ``image_decode(reduce_to=...)`` allowed it. ``width``/``height``: the full upright size in pixels, whatever
    ``image`` is. ``format``: Pillow's name of the file's format (JPEG, MPO, PNG, WEBP, GIF, TIFF, AVIF, ...).
    ``frames``: frames in the file (only the first is used). ``orientation``: the EXIF orientation applied (1 when
    none or unreadable). ``icc_converted``: an embedded profile other than sRGB was converted to sRGB.
    ``had_alpha``: the file had transparency (composited on white). ``mode``: the file's own pixel mode.
    ``keeps``: ``reduce_to`` times ``reducing_gap`` (pixels, upright), the box whose fit the picture was allowed to
    shrink to; None when no reduction was asked. Two decodes of one file with equal ``keeps`` (and the same
    ``max_bytes``) give the same picture, so a caller can tell whether another's decode is the one it would make.
    ``icc_profile``: the embedded profile ``image`` is still in (``image_decode(to_srgb=False)`` of a picture whose
    mode is one of PROFILE_KEPT_MODES), else empty: then ``image`` is sRGB.
    """

    image: Image.Image
    format: str
    width: int
    height: int
    frames: int
    orientation: int
    icc_converted: bool
    had_alpha: bool
    mode: str
    keeps: tuple[float, float] | None = None
    icc_profile: bytes = b""

    @property
    def reduced(self) -> bool:
        return self.image.size != (self.width, self.height)


def format_list(formats: Collection[str]) -> str:
    """``["JPEG", "PNG", "WEBP"]`` -> ``"JPEG, PNG or WebP"``."""
    names = list(dict.fromkeys(FORMAT_NAMES.get(f, f) for f in formats if f != "MPO"))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _accepted(formats: Collection[str] | None) -> str:
    return f"Please use a photo saved as {format_list(formats or ('JPEG', 'PNG', 'WEBP'))}."


def _what_it_is(head: bytes) -> str:
    """A guess, from the first bytes, at what a file that is not an image is."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in head.lower():
        return "an SVG drawing"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script")):
        return "a web page (HTML)"
    if text.startswith(b"%pdf"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"):
        return "a HEIC photo, which this site cannot read yet (set the phone to save 'Most Compatible' photos)"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:512]):
        return "text"
    return ""


def pixels_text(pixels: int, limit: int) -> tuple[str, str]:
    """``pixels`` and ``limit`` in megapixels, with enough decimals that a count over the limit never reads as
    equal to it ("100.000001" against "100")."""
    limit_text = f"{limit / 1e6:.6f}".rstrip("0").rstrip(".")
    for digits in range(1, 7):
        text = f"{pixels / 1e6:.{digits}f}"
        if pixels == limit or text != f"{limit / 1e6:.{digits}f}":
            return text, limit_text
    return f"{pixels / 1e6:.6f}", limit_text


def _too_many_pixels(width: int | None, height: int | None, pixels: int, limit: int) -> ImageDecodeError:
    have, most = pixels_text(pixels, limit)
    size = f"{width}x{height} pixels ({have} megapixels)" if width else f"{have} megapixels"
    return ImageDecodeError(
        "too_many_pixels",
        f"The image is {size}; the limit is {most} megapixels. "
        "Please resize it (for example to 4000 pixels wide) and try again.",
    )


def _as_file(source: bytes | bytearray | str | os.PathLike | BinaryIO) -> BinaryIO | str:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    if hasattr(source, "seek"):
        try:
            source.seek(0)
        except (OSError, ValueError):
            pass
    return source


def _head(fp: BinaryIO | str) -> bytes:
    if isinstance(fp, str):
        with open(fp, "rb") as handle:
            return handle.read(512)
    try:
        position = fp.tell()
        head = fp.read(512)
        fp.seek(position)
        return head
    except (OSError, ValueError, AttributeError):
        return b""


def _header_size(fp: BinaryIO | str, head: bytes) -> tuple[int, int] | None:
    """The size a file's header declares, read by its format's plugin without Pillow's own bomb check (which
    refuses above twice ``Image.MAX_IMAGE_PIXELS`` without saying the size)."""
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and not accept(head[:16]):
            continue
        try:
            if isinstance(fp, str):
                with open(fp, "rb") as handle:
                    return factory(handle, fp).size
            fp.seek(0)
            return factory(fp, "").size
        except Image.DecompressionBombError:
            # Some plugins (WebP) run the bomb check themselves while reading the header: the size is unknown.
            return None
        except _PILLOW_ERRORS:
            continue
    return None


def image_open(
    source: bytes | bytearray | str | os.PathLike | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Collection[str] | None = None,
) -> Image.Image:
    """Read only the header: returns Pillow's lazy image (no pixel decoded yet) after the format and pixel checks.

    Raises :class:`ImageDecodeError` (``empty``, ``not_an_image``, ``unsupported_format``, ``too_many_pixels``).
    ``FileNotFoundError`` for a missing path passes through (a programming error, not bad input).
    """
    fp = _as_file(source)
    head = _head(fp)
    if not head:
        raise ImageDecodeError("empty", "The file is empty (0 bytes). " + _accepted(formats))
    try:
        with warnings.catch_warnings():
            # Our own limit below, with a clearer message than Pillow's warning; "Corrupt EXIF data" (a
            # UserWarning while the JPEG plugin looks for a resolution in a broken EXIF block) changes nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            image = Image.open(fp)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Image.DecompressionBombError as error:
        size = _header_size(fp, head)
        if size is not None:
            raise _too_many_pixels(*size, size[0] * size[1], max_pixels) from None
        found = _BOMB_PIXELS.search(str(error))
        pixels = int(found.group(1)) if found else max_pixels + 1
        raise _too_many_pixels(None, None, pixels, max_pixels) from None
    except Image.UnidentifiedImageError:
        what = _what_it_is(head)
        found = f"This file is {what}, not a photo. " if what else "This file is not an image we can read. "
        raise ImageDecodeError("not_an_image", found + _accepted(formats)) from None
    except _PILLOW_ERRORS as error:
        raise ImageDecodeError(
            "corrupt",
            "The image could not be read: the file is damaged or cut short. " + _accepted(formats),
            f"{type(error).__name__}: {error}",
        ) from None
    if formats is not None and image.format not in formats:
        name = FORMAT_NAMES.get(image.format or "", image.format or "unknown")
        raise ImageDecodeError("unsupported_format", f"{name} images are not accepted here. " + _accepted(formats))
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError("corrupt", f"The image says it is {width}x{height} pixels. " + _accepted(formats))
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, width * height, max_pixels)
    return image


def _exif_needs_decode(image: Image.Image) -> bool:
    # Pillow's PNG getexif() decodes the whole picture to look for an eXIf chunk after the pixel data.
    return image.format == "PNG" and "exif" not in image.info and getattr(image, "_im", None) is None


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of a lazily opened image; 1 when absent, out of range or unreadable. Never
    decodes pixels: for a PNG whose EXIF would only be found after its pixel data, 1 until it is loaded."""
    if _exif_needs_decode(image):
        return 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data" before it gives up
            value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a garbage EXIF block (random bytes) raises anything; the picture stays usable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def decode_bytes_estimate(image: Image.Image) -> int:
    """The bytes Pillow needs to hold ``image`` decoded at its current size (its mode's cell size x pixels)."""
    return image.width * image.height * _BYTES_PER_PIXEL.get(image.mode, 4)


# A reduced picture keeps at least this many times the size its caller needs (Pillow's ``reducing_gap``): the
# caller's own resampling filter then decides the final pixels, as it would from the full size.
REDUCING_GAP = 3.0
# The most memory one decode may take (bytes): the decoded frame in Pillow's cells plus the RGB picture returned.
# A JPEG over it is decoded at 1/2, 1/4 or 1/8 scale; any other file over it is refused.
DEFAULT_MAX_DECODE_BYTES = 300_000_000
# Conversions (mode, transparency, ICC, orientation) run on strips of about this many pixels, so a converted
# copy of the whole picture never exists beside the decoded one.
STRIP_PIXELS = 2_000_000


def _reduce_factor(size: tuple[int, int], target: tuple[int, int], gap: float = REDUCING_GAP) -> int:
    """The largest whole factor that keeps ``size`` at least ``gap`` times its fit into ``target``.

    Computed from ``target`` x ``gap`` alone (the box kept), so that equal boxes give equal factors: (480, 480) at
    2 and (320, 320) at 3 both keep 960 pixels, and 2880 pixels across reduce by exactly 3 in both."""
    return max(1, int(max(size[0] / (target[0] * gap), size[1] / (target[1] * gap))))


def _reduced(size: tuple[int, int], factor: int) -> tuple[int, int]:
    return -(-size[0] // factor), -(-size[1] // factor)


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in ("RGBA", "LA", "La", "PA", "RGBa"):
        return True
    return image.mode == "P" and (
        "transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA")
    )


def _strip_to_rgb(
    strip: Image.Image, extrema: tuple[float, float] | None, alpha: bool, icc: bytes
) -> tuple[Image.Image, bool]:
    """One strip of any Pillow mode -> RGB: 16/32-bit stretched by the whole picture's ``extrema``, transparency
    on white, the ICC profile converted to sRGB. Returns the strip and whether a profile was converted."""
    mode = strip.mode
    if mode == "1":
        strip = strip.convert("L")
    elif mode == "P":
        strip = strip.convert("RGBA" if alpha else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        strip = strip.convert("RGBA")
    elif mode.startswith("I") or mode == "F":
        low, high = extrema or (0, 1)
        span = float(high - low) or 1.0
        if mode.startswith("I;16"):
            strip = strip.point(lambda v: (v - low) * 255.0 / span, "L")
        else:
            strip = strip.convert("F").point(lambda v: (v - low) * 255.0 / span).convert("L")
    elif mode not in ("L", "RGB", "RGBA", "CMYK"):
        strip = strip.convert("RGB")  # YCbCr, LAB, HSV, RGBX
    if strip.mode == "RGBA":
        flat = Image.new("RGB", strip.size, BACKGROUND)
        flat.paste(strip, mask=strip.getchannel("A"))
        strip = flat
    converted = False
    if icc:
        transform = _icc_transform(icc, strip.mode)
        if transform is not None:
            strip = ImageCms.applyTransform(strip, transform)
            converted = True
    if strip.mode != "RGB":
        strip = strip.convert("RGB")
    return strip, converted


def _paste_turned(out: Image.Image, strip: Image.Image, top: int, source_height: int, orientation: int) -> None:
    """Paste ``strip`` (rows ``top``.. of the reduced, stored picture, ``source_height`` rows in all) into the
    upright picture ``out``, turned as EXIF ``orientation`` says."""
    if orientation in _EXIF_TRANSPOSE:
        strip = strip.transpose(_EXIF_TRANSPOSE[orientation])
    height = strip.height if orientation in (1, 2, 3, 4) else strip.width
    if orientation in (1, 2):
        out.paste(strip, (0, top))
    elif orientation in (3, 4):
        out.paste(strip, (0, source_height - top - height))
    elif orientation in (5, 8):
        out.paste(strip, (top, 0))
    else:  # 6, 7
        out.paste(strip, (source_height - top - height, 0))


def _convert(image: Image.Image, factor: int, orientation: int, icc: bytes) -> tuple[Image.Image, bool]:
    """The decoded ``image`` -> upright 8-bit sRGB RGB, reduced by ``factor``, strip by strip."""
    extrema = image.getextrema() if image.mode.startswith("I") or image.mode == "F" else None
    alpha = _has_alpha(image)
    width, height = _reduced(image.size, factor)
    plain = image.mode == "RGB" and factor == 1 and orientation == 1
    if plain and (not icc or _icc_transform(icc, "RGB") is None):
        return image, False
    upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    out = Image.new("RGB", upright, BACKGROUND)
    rows = max(factor, STRIP_PIXELS // max(1, image.width) // factor * factor)
    converted = False
    for top in range(0, image.height, rows):
        strip = image.crop((0, top, image.width, min(image.height, top + rows)))
        strip, converted = _strip_to_rgb(strip, extrema, alpha, icc)
        if factor > 1:
            strip = strip.reduce(factor)
        _paste_turned(out, strip, top // factor, height, orientation)
    return out, converted


_SRGB = ImageCms.createProfile("sRGB")


# Probe colours for telling an sRGB profile from another: the cube's corners and a grey ramp.
_PROBE = Image.frombytes(
    "RGB", (27, 1), bytes(v for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255) for v in (r, g, b))
)


@functools.lru_cache(maxsize=16)
def _icc_transform(profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A littleCMS transform from ``profile`` (for pictures of ``mode``) to sRGB; None when the profile does not
    describe ``mode``, cannot be read, or is sRGB already (judged by what it does to probe colours, not by its
    description, which is free text: a Display P3 profile may call itself "sRGB")."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        space = source.profile.xcolor_space.strip()
        if {"RGB": "RGB", "CMYK": "CMYK", "GRAY": "L"}.get(space) != mode:
            return None
        transform = ImageCms.buildTransform(source, _SRGB, mode, "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL)
        if mode == "RGB":
            probe = ImageCms.applyTransform(_PROBE, transform)
            if max(abs(a - b) for a, b in zip(probe.tobytes(), _PROBE.tobytes(), strict=True)) <= 2:
                return None
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError, AttributeError):
        return None
    return transform


def image_decode(
    source: bytes | bytearray | str | os.PathLike | BinaryIO | Image.Image,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Collection[str] | None = None,
    reduce_to: tuple[int, int] | None = None,
    min_side: int = 1,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    mirror: bool = False,
    reducing_gap: float = REDUCING_GAP,
    to_srgb: bool = True,
) -> DecodedImage:
    """Decode ``source`` (bytes, a path, a binary file or a Pillow image) into an upright 8-bit sRGB RGB picture.

    ``max_pixels``: the most pixels (width x height) a file may declare, checked from the header before decoding.
    ``formats``: Pillow format names accepted (``None``: any format Pillow reads). ``reduce_to``: ``(width,
    height)`` in upright pixels the caller needs at most (a thumbnail, the model input, a hash): the picture is
    then decoded small (JPEG at 1/2..1/8 scale, others reduced by a whole factor) but keeps at least REDUCING_GAP
    (3) times its fit into ``reduce_to``, so the caller's own resize decides the final pixels. ``min_side``: the
    smallest accepted width or height, in pixels. ``max_bytes``: the memory budget of the decode: the decoded
    frame in Pillow's cells (1 byte a pixel for 1/L/P, 2 for 16-bit, 4 for RGB/RGBA/CMYK) plus the RGB result
    (4 bytes a pixel); a JPEG over it is decoded at a smaller scale (``reduced``), any other file is refused.
    Conversions run strip by strip (STRIP_PIXELS), so no second full-size copy exists. ``mirror``: the upright
    picture mirrored left to right, done in the same pass (a flip costs no extra copy). ``reducing_gap``: how many
    times its fit into ``reduce_to`` a reduced picture keeps at least (default REDUCING_GAP, 3; Pillow's own
    ``Image.thumbnail`` drafts with 2). ``to_srgb=False``: an RGB file's embedded colour profile is not applied (the
    pixels stay in its colour space, for a caller that keeps the profile with them: ``icc_profile``; ``icc_converted``
    is False). Only pictures of PROFILE_KEPT_MODES keep theirs; others are converted as usual.

    Returns :class:`DecodedImage`. Raises :class:`ImageDecodeError` for anything that is not such a picture; a
    missing path raises ``FileNotFoundError``.
    """
    if isinstance(source, Image.Image):
        image = source
        orientation = exif_orientation(image) if hasattr(image, "getexif") else 1
        if image.width * image.height > max_pixels:
            raise _too_many_pixels(image.width, image.height, image.width * image.height, max_pixels)
    else:
        image = image_open(source, max_pixels=max_pixels, formats=formats)
        orientation = exif_orientation(image)
    fmt = image.format or ""
    frames = getattr(image, "n_frames", 1) if fmt != "JPEG" else 1
    turned = orientation in (5, 6, 7, 8)
    width, height = (image.height, image.width) if turned else image.size
    if min(width, height) < min_side:
        raise ImageDecodeError(
            "too_small",
            f"The image is only {width}x{height} pixels; it needs at least {min_side} pixels on each side.",
        )
    mode = image.mode
    embedded = bytes(image.info.get("icc_profile") or b"")
    kept = b"" if to_srgb or mode not in PROFILE_KEPT_MODES else embedded
    icc = b"" if kept else embedded
    had_alpha = _has_alpha(image)
    target = (reduce_to[1], reduce_to[0]) if reduce_to and turned else reduce_to
    wanted = _reduce_factor(image.size, target, reducing_gap) if target else 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            if frames > 1:
                image.seek(0)
            if fmt in ("JPEG", "MPO"):
                scale = 1
                while scale < 8 and (
                    scale * 2 <= wanted or _cost(image.size, mode, scale, max(1, wanted // scale)) > max_bytes
                ):
                    scale *= 2
                if scale > 1:
                    # Pillow picks the largest of 1/2, 1/4, 1/8 that keeps the size asked for, judged by whole
                    # divisions: ask for the floor (4033x3025 at 1/4: 1008x756; the ceiling, 1009x757, would give
                    # 1/2), then read the scale it chose from the box it returns (the original in the new pixels).
                    full_width = image.size[0]
                    drafted = image.draft(None, (max(1, full_width // scale), max(1, image.size[1] // scale)))
                    scale = round(full_width / drafted[1][2]) if drafted else 1
                    wanted = max(1, wanted // scale)
            factor = wanted
            plain = image.mode == "RGB" and orientation == 1 and not mirror and not icc
            while _cost(image.size, image.mode, 1, factor, plain, fmt) > max_bytes and factor < 64:
                if _load_bytes(image.size, image.mode, fmt) > max_bytes:
                    break
                factor *= 2
            if _cost(image.size, image.mode, 1, factor, plain, fmt) > max_bytes:
                raise _too_much_memory(image, width, height, max_bytes)
            late_exif = _exif_needs_decode(image)
            image.load()
            if late_exif and orientation == 1:  # a PNG's eXIf chunk after its pixel data
                orientation = exif_orientation(image)
                width, height = (image.height, image.width) if orientation in (5, 6, 7, 8) else image.size
            turn = _MIRRORED[orientation] if mirror else orientation
            image, icc_converted = _convert(image, factor, turn, icc)
    except ImageDecodeError:
        raise
    except _PILLOW_ERRORS as error:
        raise ImageDecodeError(
            "corrupt",
            "The image could not be decoded: the file is damaged or cut short. Please try another copy of the photo.",
            f"{type(error).__name__}: {error}",
        ) from None
    image.info.pop("icc_profile", None)
    return DecodedImage(
        image=image,
        format=fmt,
        width=width,
        height=height,
        frames=frames,
        orientation=orientation if orientation in _EXIF_TRANSPOSE else 1,
        icc_converted=icc_converted,
        had_alpha=had_alpha,
        mode=mode,
        keeps=(reduce_to[0] * reducing_gap, reduce_to[1] * reducing_gap) if reduce_to else None,
        icc_profile=kept,
    )


# Peak bytes a pixel while Pillow loads these formats (measured with Pillow 13): WebP goes through libwebp's
# animation decoder (its canvas, a bytes copy, the image), AVIF through libavif's buffer and a copy.
_LOAD_BYTES_PER_PIXEL = {"WEBP": 16, "AVIF": 8}


def _load_bytes(size: tuple[int, int], mode: str, fmt: str) -> int:
    """Peak bytes while the frame of ``size`` loads: its cells, or more for formats decoded through a copy."""
    return size[0] * size[1] * max(_BYTES_PER_PIXEL.get(mode, 4), _LOAD_BYTES_PER_PIXEL.get(fmt, 0))


def _cost(size: tuple[int, int], mode: str, scale: int, factor: int, plain: bool = False, fmt: str = "") -> int:
    """Bytes a decode at 1/``scale`` (JPEG) reduced by ``factor`` holds at once: the decoded cells (or the
    format's load peak), the RGB result (4 bytes a pixel) and one strip converted; ``plain`` (RGB, nothing to
    convert, ``factor`` 1): the decoded cells are the result."""
    decoded = _reduced(size, scale)
    cells = _load_bytes(decoded, mode, fmt)
    if plain and factor == 1:
        return cells
    result = _reduced(decoded, factor)
    return cells + result[0] * result[1] * 4 + min(STRIP_PIXELS, decoded[0] * decoded[1]) * 8


def _too_much_memory(image: Image.Image, width: int, height: int, max_bytes: int) -> ImageDecodeError:
    cell = max(_BYTES_PER_PIXEL.get(image.mode, 4), _LOAD_BYTES_PER_PIXEL.get(image.format or "", 0))
    need = image.width * image.height * cell
    most_pixels = max_bytes // (cell + 1) // 1_000_000
    return ImageDecodeError(
        "too_many_pixels",
        f"The image is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels) of {image.mode} pixels: "
        f"decoding it would take {need / 1e6:.0f} MB of memory, more than the {max_bytes / 1e6:.0f} MB allowed. "
        f"Please save it as JPEG, or resize it to at most {most_pixels} megapixels, and try again.",
    )
