"""Hostile and unusual image files, drawn by the tests themselves (no ../shared): each stands for a kind of file
strangers send. ``cases()`` lists them with what the site (upload form, API) and the training set (admin upload,
zip import) must answer: accepted, or refused with an exact message.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms

from tests.support import draw_car, encode

SITE_FORMATS = "JPEG, PNG, WebP, GIF, TIFF, BMP or AVIF"
DATASET_FORMATS = "JPEG, PNG or WebP"
CUT_SHORT = "The image could not be decoded: the file is damaged or cut short. Please try another copy of the photo."
# A colour-managed viewer shows this body colour for the Display P3 picture below.
P3_BODY_SRGB = (217, 42, 51)


@dataclass(frozen=True)
class Case:
    """One file: ``site``/``dataset`` is None when the file must be accepted there, else the exact refusal."""

    label: str
    filename: str
    data: bytes
    site: str | None = None
    dataset: str | None = None


# --- Pictures ------------------------------------------------------------------------------------------------


def grey16_png(seed: int, size: tuple[int, int] = (320, 160)) -> tuple[bytes, np.ndarray]:
    """A car in 16-bit greyscale (values 30*257..230*257, as from a scanner) and the 8-bit picture it should
    decode to (stretched from its darkest to its brightest value)."""
    grey = np.asarray(draw_car(size, seed=seed).convert("L"), dtype=np.float64)
    low, high = grey.min(), grey.max()
    sixteen = (30 + (grey - low) / (high - low) * 200) * 257
    image = Image.fromarray(sixteen.astype(np.uint16))
    assert image.mode.startswith("I;16")
    expected = (sixteen - sixteen.min()) / (sixteen.max() - sixteen.min()) * 255
    return encode(image, "PNG"), expected


def cutout_pair(size: tuple[int, int] = (320, 160)) -> tuple[bytes, bytes]:
    """The same car as a transparent cut-out (RGBA PNG) and flattened on white (JPEG)."""
    car = draw_car(size, body=(40, 90, 200), mode="RGBA")
    pixels = np.asarray(car).copy()
    background = np.all(pixels[:, :, :3] == np.asarray(car.getpixel((0, 0))[:3]), axis=2)
    pixels[background, 3] = 0
    cutout = Image.fromarray(pixels, "RGBA")
    on_white = Image.new("RGB", size, (255, 255, 255))
    on_white.paste(cutout, mask=cutout.getchannel("A"))
    return encode(cutout, "PNG"), encode(on_white, "JPEG", quality=90)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def display_p3_profile(description: str = "sRGB built-in") -> bytes:
    """A Display P3 ICC profile (v2 matrix/TRC: P3 primaries adapted to D50, gamma 2.2). Its description is
    free text and here claims "sRGB", as some phone profiles' do: only the numbers tell what it is."""
    colorants = {
        b"rXYZ": (0.5151, 0.2412, -0.0011),
        b"gXYZ": (0.2920, 0.6922, 0.0419),
        b"bXYZ": (0.1571, 0.0666, 0.7841),
        b"wtpt": (0.9642, 1.0, 0.8249),
    }
    tags: list[tuple[bytes, bytes]] = []
    text = description.encode("ascii") + b"\0"
    tags.append((b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 79))
    for name, xyz in colorants.items():
        tags.append((name, b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)))
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve), (b"cprt", b"text\0\0\0\0none\0\0\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for name, data in tags:
        table += name + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + bytes((2, 0x10, 0, 0))
        + b"mntrRGB XYZ "
        + bytes(12)
        + b"acsp"
        + bytes(24)
        + struct.pack(">I", 0)
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + bytes(48)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def p3_jpeg(size: tuple[int, int] = (320, 160)) -> bytes:
    """A car whose body a colour-managed viewer shows as P3_BODY_SRGB: the pixels are that colour converted to
    Display P3, and the file carries the P3 profile."""
    srgb = draw_car(size, body=P3_BODY_SRGB)
    p3 = ImageCms.ImageCmsProfile(io.BytesIO(display_p3_profile()))
    to_p3 = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), p3, "RGB", "RGB")
    return encode(ImageCms.applyTransform(srgb, to_p3), "JPEG", quality=95, icc_profile=p3.tobytes())


def mpo(size: tuple[int, int] = (320, 160)) -> bytes:
    """A two-frame MPO with EXIF orientation 1, as Ultra HDR phone photos arrive."""
    exif = Image.Exif()
    exif[0x0112] = 1
    second = draw_car(size, body=(20, 160, 20))
    return encode(draw_car(size), "MPO", save_all=True, append_images=[second], exif=exif, quality=90)


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """``jpeg`` with an APP1 segment holding ``payload`` right after its start-of-image marker."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def broken_exif_jpegs() -> dict[str, bytes]:
    """JPEGs whose EXIF block is broken in different ways; every one must be accepted, its EXIF ignored."""
    base = encode(draw_car((320, 160)), "JPEG", quality=90)
    rng = np.random.default_rng(11)
    tiff_pointing_past_the_end = b"II*\x00" + struct.pack("<I", 10_000)
    huge_count = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 0xFFFF) + bytes(10)
    bad_orientation = Image.Exif()
    bad_orientation[0x0112] = 9
    return {
        "exif_garbage": with_app1(base, b"Exif\x00\x00" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()),
        "exif_offset_past_end": with_app1(base, b"Exif\x00\x00" + tiff_pointing_past_the_end),
        "exif_huge_count": with_app1(base, b"Exif\x00\x00" + huge_count),
        "exif_empty": with_app1(base, b"Exif\x00\x00"),
        "exif_orientation_9": encode(draw_car((320, 160)), "JPEG", exif=bad_orientation),
    }


def member_damaged_zip(photos: list[tuple[str, bytes, int]], damaged: list[int]) -> bytes:
    """A zip of ``(name, bytes, compression)`` whose members numbered in ``damaged`` have their compressed
    stream overwritten (a deflate or LZMA stream that no longer decodes)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data, compression in photos:
            zf.writestr(name, data, compress_type=compression)
    raw = bytearray(out.getvalue())
    for number in damaged:
        info = zipfile.ZipFile(io.BytesIO(bytes(raw))).infolist()[number]
        name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
        start = info.header_offset + 30 + name_length + extra_length
        # Deflate: from the first block header on (an invalid block type); LZMA: past its properties header.
        begin = start + (0 if info.compress_type == zipfile.ZIP_DEFLATED else info.compress_size // 4)
        raw[begin : begin + info.compress_size // 2] = b"\xff" * (info.compress_size // 2)
    return bytes(raw)


def zip_member_patched(
    photos: list[tuple[str, bytes]], number: int, *, flag: int = 0, method: int | None = None
) -> bytes:
    """A zip of ``photos`` whose member ``number`` has ``flag`` set in its general purpose bits (1: encrypted) and
    its compression ``method`` replaced (99: AES, 93: Zstandard, which zipfile cannot unpack), in both headers."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in photos:
            zf.writestr(name, data)
    raw = bytearray(out.getvalue())
    info = zipfile.ZipFile(io.BytesIO(bytes(raw))).infolist()[number]
    central = raw.find(b"PK\x01\x02")
    for _ in range(number):
        central = raw.find(b"PK\x01\x02", central + 4)
    for at in (info.header_offset + 6, central + 8):  # flag bits, then the method, in each header
        raw[at : at + 2] = struct.pack("<H", struct.unpack("<H", raw[at : at + 2])[0] | flag)
        if method is not None:
            raw[at + 2 : at + 4] = struct.pack("<H", method)
    return bytes(raw)


def zip_without_utf8_flag(photos: list[tuple[str, bytes]]) -> bytes:
    """A zip as macOS's Archive Utility makes it: names in UTF-8 without the UTF-8 flag (bit 11)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in photos:
            zf.writestr(name, data)
    raw = bytearray(out.getvalue())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = raw.find(signature)
        while position >= 0:
            flags = struct.unpack("<H", raw[position + flag_at : position + flag_at + 2])[0]
            raw[position + flag_at : position + flag_at + 2] = struct.pack("<H", flags & ~0x800)
            position = raw.find(signature, position + 4)
    return bytes(raw)


def animated(fmt: str, size: tuple[int, int] = (320, 160)) -> bytes:
    frames = [draw_car(size), draw_car(size, body=(20, 160, 20))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_with_transparency(size: tuple[int, int] = (320, 160)) -> bytes:
    """A palette PNG whose background palette entry is transparent (tRNS)."""
    image = draw_car(size).quantize(16)
    background = image.getpixel((0, 0))
    return encode(image, "PNG", transparency=background)


def pixel_bomb(side: int) -> bytes:
    """A PNG of ``side`` x ``side`` white pixels: a few kilobytes for many megapixels."""
    return encode(Image.new("1", (side, side), 1), "PNG", optimize=True)


def webp_bomb(side: int = 16384) -> bytes:
    """A lossless WebP whose header declares ``side`` x ``side`` pixels (a few dozen bytes). Pillow's WebP plugin runs
    its own bomb check while reading that header, so even the header read that states the size raises."""
    data = bytearray(encode(Image.new("RGB", (16, 16), "white"), "WEBP", lossless=True))
    at = data.find(b"VP8L") + 9  # chunk name, chunk size, the 0x2f signature, then 14 bits width-1, 14 bits height-1
    bits = struct.unpack("<I", data[at : at + 4])[0] & ~((1 << 28) - 1)
    data[at : at + 4] = struct.pack("<I", bits | (side - 1) | ((side - 1) << 14))
    return bytes(data)


# --- The corpus -------------------------------------------------------------------------------------------


def _not_a_photo(what: str, formats: str) -> str:
    return f"This file is {what}, not a photo. Please use a photo saved as {formats}."


def _not_accepted(name: str) -> str:
    return f"{name} images are not accepted here. Please use a photo saved as {DATASET_FORMATS}."


def cases() -> list[Case]:
    """Every kind of file the channels must handle, with the answer each must give (see Case)."""
    car = draw_car((320, 160))
    jpeg = encode(car, "JPEG", quality=90)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script><rect width="9" height="9"/></svg>'
    html = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
    with_zip = io.BytesIO()
    with zipfile.ZipFile(with_zip, "w") as zf:
        zf.writestr("evil.txt", "payload")
    grey16, _ = grey16_png(1)
    cutout, on_white = cutout_pair()
    one_line = "The image is only {0}x{1} pixels; it needs at least 16 pixels on each side."
    webp_too_big = (
        "The image is 268.4 megapixels; the limit is 100 megapixels. "
        "Please resize it (for example to 4000 pixels wide) and try again."
    )
    found: list[Case] = [
        Case(
            "zero bytes",
            "empty.jpg",
            b"",
            f"The file is empty (0 bytes). Please use a photo saved as {SITE_FORMATS}.",
            f"The file is empty (0 bytes). Please use a photo saved as {DATASET_FORMATS}.",
        ),
        Case(
            "text named .jpg",
            "notes.jpg",
            b"just some notes\nabout my car\n" * 10,
            _not_a_photo("text", SITE_FORMATS),
            _not_a_photo("text", DATASET_FORMATS),
        ),
        Case(
            "SVG with script",
            "car.svg",
            svg,
            _not_a_photo("an SVG drawing", SITE_FORMATS),
            _not_a_photo("an SVG drawing", DATASET_FORMATS),
        ),
        Case(
            "HTML with script",
            "car.jpg",
            html,
            _not_a_photo("a web page (HTML)", SITE_FORMATS),
            _not_a_photo("a web page (HTML)", DATASET_FORMATS),
        ),
        Case("truncated JPEG", "cut.jpg", jpeg[: len(jpeg) // 2], CUT_SHORT, CUT_SHORT),
        Case("JPEG with a zip appended", "polyglot.jpg", jpeg + with_zip.getvalue()),
        Case("CMYK JPEG", "cmyk.jpg", encode(car.convert("CMYK"), "JPEG", quality=90)),
        Case("palette PNG with transparency", "palette.png", palette_with_transparency()),
        Case("animated GIF", "car.gif", animated("GIF"), None, _not_accepted("GIF")),
        Case("animated WebP", "car.webp", animated("WEBP")),
        Case("TIFF", "car.tiff", encode(car, "TIFF"), None, _not_accepted("TIFF")),
        Case("1x1", "dot.png", encode(Image.new("RGB", (1, 1), "red"), "PNG"), one_line.format(1, 1)),
        Case("4000x10", "strip.png", encode(Image.new("RGB", (4000, 10), "red"), "PNG"), one_line.format(4000, 10)),
        Case("100x4000", "pole.png", encode(Image.new("RGB", (100, 4000), "red"), "PNG")),
        Case("WebP header of 268 megapixels", "huge.webp", webp_bomb(), webp_too_big, webp_too_big),
        Case("16-bit greyscale", "grey16.png", grey16),
        Case("transparent cut-out", "cutout.png", cutout),
        Case("cut-out on white", "on_white.jpg", on_white),
        Case("Display P3", "p3.jpg", p3_jpeg()),
        Case("two-frame MPO", "mpo.jpg", mpo()),
        Case("name with ../", "../../../etc/passwd.jpg", jpeg),
        Case("name with NUL", "car\x00.php.jpg", encode(draw_car((320, 160), seed=3), "JPEG")),
        Case("unicode name", "Käfer 🚗 ünïcødé.jpg", encode(draw_car((320, 160), seed=4), "JPEG")),
        Case("300-character name", "c" * 296 + ".jpg", encode(draw_car((320, 160), seed=5), "JPEG")),
    ]
    try:
        found.append(Case("AVIF", "car.avif", encode(car, "AVIF"), None, _not_accepted("AVIF")))
    except (KeyError, OSError):  # a Pillow without libavif: refused like any unknown format
        pass
    for label, data in broken_exif_jpegs().items():
        found.append(Case(label, f"{label}.jpg", data))
    return found
