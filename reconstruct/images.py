"""What the site keeps of an image file, shared by uploads and the training set.

Decoding is ``ml.decode.image_decode`` (one path for every file). This module decides what is *stored*: the
file's own bytes with their metadata blocks cut out when nothing about the picture has to change (no second
round of JPEG compression, no full-size decode of a 100-megapixel file just to save it again), a new encoding
only when the picture changes (turned upright, CMYK made RGB, first frame of an animation, a format browsers
cannot show). A colour profile other than sRGB stays with the copy (browsers apply it).
"""

from __future__ import annotations

import io
import re
import zlib
from typing import NamedTuple

from PIL import Image, features

from ml.decode import PROFILE_KEPT_MODES, DecodedImage, image_decode

# Formats a browser shows as they are: Pillow's format name -> (the format a copy is saved in, file extension).
# Uploads in any other accepted format (GIF, TIFF, BMP, AVIF) are stored as PNG; the training set refuses them.
STORED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("JPEG", "jpg"),
    "MPO": ("JPEG", "jpg"),
    "PNG": ("PNG", "png"),
    "WEBP": ("WEBP", "webp"),
}
# What the upload form and the API accept (Pillow's names); AVIF where this Pillow was built with libavif.
UPLOAD_FORMATS: tuple[str, ...] = (
    "JPEG",
    "MPO",
    "PNG",
    "WEBP",
    "GIF",
    "TIFF",
    "BMP",
    *(("AVIF",) if features.check("avif") else ()),
)
# What the training set keeps: the exact bytes, so only formats browsers show.
DATASET_FORMATS: tuple[str, ...] = tuple(STORED_FORMATS)

# JPEG segments kept: JFIF (APP0) and Adobe (APP14: says how to read the colour channels); every other
# application block (EXIF with GPS, XMP, MPF, maker notes) and comments go, and the colour profile (APP2
# ICC_PROFILE) too unless it is asked for (``keep_icc``: a profile other than sRGB, which viewers apply).
_JPEG_KEEP_APP = (0xE0, 0xEE)
_JPEG_ICC = b"ICC_PROFILE\x00"
# PNG chunks kept: the picture and its transparency; text, EXIF, time, gamma and animation chunks go (the decoded
# pixels, what the model sees, ignore gamma and chromaticity too), and the colour profile unless asked for.
_PNG_KEEP = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# The end of a scan's entropy-coded data: a 0xFF that starts a marker, i.e. not followed by a stuffed 0x00, a
# restart marker (RST0-RST7) or another 0xFF (a fill byte; the last 0xFF of a run is the marker's).
_JPEG_SCAN_END = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


def jpeg_without_metadata(data: bytes, *, keep_icc: bool = False) -> bytes:
    """The first picture of a JPEG (or MPO) file with its metadata segments removed; the compressed data is
    copied byte for byte, and with ``keep_icc`` its colour profile (every APP2 ``ICC_PROFILE`` segment, in order).
    Raises ``ValueError`` when the marker structure is not what the standard says (ITU T.81, annex B)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    out = bytearray(b"\xff\xd8")
    i, n = 2, len(data)
    while True:
        if i >= n or data[i] != 0xFF:
            raise ValueError("JPEG marker expected")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            raise ValueError("JPEG cut short")
        marker = data[i]
        i += 1
        if marker == 0xD9:  # end of image: anything after it (a second MPO frame, an appended zip) is dropped
            out += b"\xff\xd9"
            return bytes(out)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            out += bytes((0xFF, marker))
            continue
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2 or i + length > n:
            raise ValueError("JPEG segment cut short")
        segment = data[i : i + length]
        i += length
        is_jfif = marker == 0xE0 and segment[2:7] == b"JFIF\x00"
        is_icc = keep_icc and marker == 0xE2 and segment[2:14] == _JPEG_ICC
        dropped_app = (
            0xE0 <= marker <= 0xEF and not is_icc and (marker not in _JPEG_KEEP_APP or (marker == 0xE0 and not is_jfif))
        )
        if marker == 0xFE or dropped_app:
            continue
        out += bytes((0xFF, marker)) + segment
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker that is not 00 or RSTn
            end = _JPEG_SCAN_END.search(data, i)
            if end is None:
                raise ValueError("JPEG scan cut short")
            out += data[i : end.start()]
            i = end.start()


def png_without_metadata(data: bytes, *, keep_icc: bool = False) -> bytes:
    """A PNG with only its picture chunks (IHDR, PLTE, tRNS, IDAT, IEND), and with ``keep_icc`` its colour profile
    (iCCP); nothing after IEND. Raises ``ValueError`` for a broken chunk structure, or an animated PNG (an ``acTL``
    chunk, even for one frame: its frame control, which the picture's decoding follows, would be cut out)."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    out = bytearray(_PNG_SIGNATURE)
    i, n = len(_PNG_SIGNATURE), len(data)
    while i + 12 <= n:
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        end = i + 12 + length
        if end > n:
            break
        if kind == b"acTL":
            raise ValueError("an animated PNG")
        if kind in _PNG_KEEP or (keep_icc and kind == b"iCCP"):
            out += data[i:end]
        i = end
        if kind == b"IEND":
            return bytes(out)
    raise ValueError("PNG cut short")


def webp_without_metadata(data: bytes, *, keep_icc: bool = False) -> bytes:
    """A still WebP without its EXIF and XMP chunks, and without its ICC chunk unless ``keep_icc`` (the VP8X flags
    and RIFF size follow); the compressed picture is copied byte for byte. Raises ``ValueError`` for a broken RIFF
    structure or an animation."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    out = bytearray()
    i, end = 12, min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    while i + 8 <= end:
        kind = data[i : i + 4]
        length = int.from_bytes(data[i + 4 : i + 8], "little")
        chunk = bytearray(data[i : i + 8 + length + (length & 1)])
        if len(chunk) < 8 + length:
            raise ValueError("WebP cut short")
        i += len(chunk)
        if kind in (b"ANIM", b"ANMF"):
            raise ValueError("an animated WebP")
        if kind in (b"EXIF", b"XMP ") or (kind == b"ICCP" and not keep_icc):
            continue
        if kind == b"VP8X":
            chunk[8] &= ~((0 if keep_icc else 0x20) | 0x08 | 0x04) & 0xFF  # no EXIF or XMP (nor ICC) any more
        out += chunk
    return b"RIFF" + (len(out) + 4).to_bytes(4, "little") + b"WEBP" + bytes(out)


class StoredOriginal(NamedTuple):
    """What ``original_for_storage`` keeps: the bytes, their format (JPEG, PNG, WEBP) and file extension, the
    picture's ``(width, height)`` in pixels, and ``copied``: the bytes are the file's own compressed picture (only
    metadata cut out), so they decode to exactly the pixels the file did."""

    content: bytes
    format: str
    extension: str
    size: tuple[int, int]
    copied: bool


def original_for_storage(data: bytes, decoded: DecodedImage, *, max_pixels: int) -> StoredOriginal:
    """What to store for an accepted upload (:class:`StoredOriginal`).

    ``decoded`` is ``image_decode``'s answer for ``data`` (at any size). The file's own bytes, metadata removed,
    when the picture needs no change; a colour profile other than sRGB (Display P3 from phones, Adobe RGB) stays
    with them, as every browser applies it, instead of the whole picture being converted and encoded again (about
    300 ms of CPU for a 12-megapixel phone photo, and a second round of JPEG compression); the site's own decode
    applies it too (thumbnail, model). Otherwise (turned upright, CMYK, several frames, a structure the copy does
    not understand) the picture decoded at full size and saved anew, in sRGB or, for an RGB picture with a profile
    other than sRGB, in its own colour space with that profile (``image_decode(to_srgb=False)``): JPEG sources as
    JPEG (quality 92), WebP as WebP (quality 95), everything else as PNG (lossless). Never with options that
    assume the source format (``quality="keep"`` needs a JPEG image object). A picture that cannot be decoded
    whole within ml.decode's memory budget is stored at the size it could be decoded at (a 100-megapixel JPEG
    that must be turned upright: at 1/2 or 1/4 scale); raises ImageDecodeError for one that cannot be at all.
    """
    size = (decoded.width, decoded.height)
    icc = decoded.icc_converted  # a profile the decode applied: kept, so the copy decodes (and shows) the same
    # ... where the file may carry it: an RGB profile on RGB or palette pixels, a grey one on grey pixels. Its
    # decode applies an RGB profile to a grey picture with alpha too (after making it RGB): stored in sRGB instead.
    unchanged = decoded.orientation == 1 and (not icc or decoded.mode in ("RGB", "RGBA", "P", "L"))
    try:
        # A JPEG's first picture (an MPO's other frames dropped) is copied as it is; CMYK is re-encoded as RGB.
        if unchanged and decoded.format in ("JPEG", "MPO") and decoded.mode in ("RGB", "L"):
            return StoredOriginal(jpeg_without_metadata(data, keep_icc=icc), "JPEG", "jpg", size, copied=True)
        if unchanged and decoded.format == "PNG" and decoded.frames == 1:
            return StoredOriginal(png_without_metadata(data, keep_icc=icc), "PNG", "png", size, copied=True)
        if unchanged and decoded.format == "WEBP" and decoded.frames == 1:
            return StoredOriginal(webp_without_metadata(data, keep_icc=icc), "WEBP", "webp", size, copied=True)
    except ValueError:
        pass  # a structure the copy does not understand: saved anew from the decoded picture
    # An RGB picture's profile stays with it here too: a turned phone photo in Display P3 is not converted at full
    # size (about 210 ms of CPU at 12 megapixels); browsers and the site's decode apply the profile.
    profile = None
    if decoded.icc_converted and decoded.mode in PROFILE_KEPT_MODES:  # the decode applied a profile it could keep
        own = image_decode(data, max_pixels=max_pixels, to_srgb=False)
        full, profile = own.image, own.icc_profile or None
    else:
        full = decoded.image if not decoded.reduced else image_decode(data, max_pixels=max_pixels).image
    stored_format, extension = STORED_FORMATS.get(decoded.format, ("PNG", "png"))
    full.info.clear()  # nothing of the file's own (a JPEG comment would otherwise be written again)
    out = io.BytesIO()
    if stored_format == "JPEG":
        full.save(out, "JPEG", quality=92, icc_profile=profile)
    elif stored_format == "WEBP":
        full.save(out, "WEBP", quality=95, icc_profile=profile)
    else:
        full.save(out, "PNG", compress_level=4, icc_profile=profile)
    return StoredOriginal(out.getvalue(), stored_format, extension, full.size, copied=False)


def thumbnail_jpeg(image: Image.Image, size: tuple[int, int], quality: int = 85) -> bytes:
    """``image`` fitted into ``size`` (never enlarged), as JPEG bytes; ``image`` itself is left as it is."""
    scale = min(1.0, size[0] / image.width, size[1] / image.height)
    small = image
    if scale < 1.0:
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        small = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    small.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def sizes_text(size: int, limit: int) -> tuple[str, str]:
    """``size`` and ``limit`` in bytes for people ("26.3 MB", "25 MB"), in exact bytes when rounding would make a
    file over the limit read as equal to it ("26,214,401 bytes" against "26,214,400 bytes")."""
    from django.template.defaultfilters import filesizeformat

    def text(n: int) -> str:
        return filesizeformat(n).replace("\xa0", " ")  # JSON clients would see filesizeformat's "\u00a0"

    have, most = text(size), text(limit)
    if have == most and size != limit:
        return f"{size:,} bytes", f"{limit:,} bytes"
    return have, most


def display_name(name: str, default: str = "upload") -> str:
    """A user's file name, for display only (storage keys are chosen by the site): its last path part (``../``
    and Windows folders gone), no control characters (NUL...), at most 255 characters with the extension kept;
    ``default`` when nothing is left."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in ("", ".", ".."):
        return default
    if len(name) > 255:
        stem, dot, extension = name.rpartition(".")
        keep = bool(dot) and len(extension) <= 10
        name = stem[: 255 - len(extension) - 1] + dot + extension if keep else name[:255]
    return name


def png_bytes(image: Image.Image) -> bytes:
    """A model-sized picture (a result, its model input, a slider edit) as PNG bytes: zlib level 1 with its run-length
    strategy (``Z_RLE``). On 80 results of ``../shared/data/cars`` (113x64 frames): 0.56 to 0.62 ms a picture
    against 0.70 to 0.73 at level 1's default strategy, the reconstructions 4.5% smaller and the model inputs 0.6%
    larger; Pillow's default level 6 took 1.5 ms a picture, about three times as long, for files 1.5% smaller."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()
