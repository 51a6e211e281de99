"""ml.decode.image_decode: the one decoding path, on pictures the tests draw (tests/hostile.py)."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from ml import decode
from ml.decode import ImageDecodeError, image_decode, image_open, pixels_text
from tests import hostile
from tests.support import draw_car, encode


def _rgb(decoded, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in decoded.image.getpixel(xy))


def test_it_stretches_16_bit_greyscale_instead_of_clipping_it() -> None:
    data, expected = hostile.grey16_png(1)
    decoded = image_decode(data)
    grey = np.asarray(decoded.image.convert("L"), dtype=np.float64)
    assert decoded.mode.startswith("I;16") and decoded.image.mode == "RGB"
    assert abs(grey.mean() - expected.mean()) < 1.0
    assert np.abs(grey - expected).max() <= 1.0
    assert grey.min() == 0 and grey.max() == 255


def test_it_composites_transparency_on_white() -> None:
    cutout, on_white = hostile.cutout_pair()
    decoded = image_decode(cutout)
    assert decoded.had_alpha and _rgb(decoded, (2, 2)) == (255, 255, 255)
    reference = np.asarray(image_decode(on_white).image, dtype=np.int16)
    assert np.abs(np.asarray(decoded.image, dtype=np.int16) - reference).mean() < 2.0
    palette = image_decode(hostile.palette_with_transparency())
    assert palette.had_alpha and _rgb(palette, (2, 2)) == (255, 255, 255)


def test_it_converts_an_icc_profile_to_srgb_whatever_the_profile_calls_itself() -> None:
    data = hostile.p3_jpeg()
    raw = Image.open(io.BytesIO(data)).convert("RGB").getpixel((160, 90))
    decoded = image_decode(data)
    body = _rgb(decoded, (160, 90))
    assert decoded.icc_converted
    assert max(abs(a - b) for a, b in zip(body, hostile.P3_BODY_SRGB, strict=True)) <= 3, body
    assert max(abs(a - b) for a, b in zip(raw, hostile.P3_BODY_SRGB, strict=True)) > 10  # the file's own numbers
    srgb_tagged = encode(draw_car(), "JPEG", icc_profile=Image.new("RGB", (1, 1)).info.get("icc_profile", b"x"))
    assert not image_decode(srgb_tagged).icc_converted  # a broken or missing profile is ignored


def test_it_takes_the_first_frame_of_multi_frame_files() -> None:
    for data, fmt in ((hostile.mpo(), "MPO"), (hostile.animated("GIF"), "GIF"), (hostile.animated("WEBP"), "WEBP")):
        decoded = image_decode(data)
        assert (decoded.format, decoded.frames) == (fmt, 2)
        red, green, _ = _rgb(decoded, (160, 90))
        assert red > 150 and green < 80, (fmt, red, green)  # the first frame's red car, not the green one


@pytest.mark.parametrize("label", list(hostile.broken_exif_jpegs()))
def test_it_ignores_broken_exif(label: str) -> None:
    decoded = image_decode(hostile.broken_exif_jpegs()[label])
    assert decoded.orientation == 1 and decoded.image.size == (320, 160)


def test_it_applies_the_exif_orientation_also_when_decoding_small() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(draw_car((1600, 800)).transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif)
    full = image_decode(data)
    small = image_decode(data, reduce_to=(100, 100))
    assert (full.width, full.height) == (small.width, small.height) == (1600, 800)
    assert full.image.size == (1600, 800) and small.reduced and small.image.size == (400, 200)  # libjpeg at 1/4


def test_an_odd_sized_jpeg_is_reduced_as_far_as_an_even_sized_one() -> None:
    # 1001x757 into 80x80 with 3 times to spare allows 1/4 (the ceiling of 1001/4 x 757/4 is 251x190); Pillow's
    # draft judges by whole divisions, so asking for that ceiling gave 1/2 (1001 // 251 == 3).
    data = encode(draw_car((1001, 757), seed=5), "JPEG")
    small = image_decode(data, reduce_to=(80, 80))
    assert small.reduced and small.image.size == (251, 190)
    assert (small.width, small.height) == (1001, 757)
    even = image_decode(encode(draw_car((1000, 756), seed=5), "JPEG"), reduce_to=(80, 80))
    assert even.image.size == (250, 189)


def test_decodes_that_keep_the_same_box_are_the_same_picture() -> None:
    # The upload's decode for its thumbnail (480 pixels, 2 times to spare) and ml.framing's first decode (320, 3
    # times) keep the same 960-pixel box: the same scale, the same pixels, and ``keeps`` says so. A width that is an
    # exact multiple of the box (2880 = 3 x 960) reduces by that multiple in both.
    for size, fmt, reduced in (((4032, 3024), "JPEG", (1008, 756)), ((2880, 1000), "PNG", (960, 334))):
        data = encode(draw_car(size, seed=2), fmt)
        thumbnail = image_decode(data, reduce_to=(480, 480), reducing_gap=2.0)
        working = image_decode(data, reduce_to=(320, 320))
        assert thumbnail.keeps == working.keeps == (960.0, 960.0)
        assert thumbnail.image.size == working.image.size == reduced
        assert thumbnail.image.tobytes() == working.image.tobytes()
    assert image_decode(data).keeps is None
    assert image_decode(data, reduce_to=(100, 50), reducing_gap=2.5).keeps == (250.0, 125.0)


def test_pillow_keeps_a_few_freed_blocks_for_the_next_picture() -> None:
    # Set by importing ml.decode (every process that decodes does); an operator's PILLOW_BLOCKS_MAX is left alone.
    import subprocess
    import sys

    assert Image.core.get_blocks_max() == decode.PILLOW_BLOCKS_CACHED
    probe = "import ml.decode; from PIL import Image; print(Image.core.get_blocks_max())"
    env = {**os.environ, "PILLOW_BLOCKS_MAX": "1"}
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout == "1\n"


def test_it_checks_the_pixel_count_from_the_header_before_decoding() -> None:
    bomb = hostile.pixel_bomb(20_000)  # 400 megapixels in a few kilobytes
    assert len(bomb) < 100_000
    started = time.process_time()
    with pytest.raises(ImageDecodeError) as caught:
        image_decode(bomb, max_pixels=100_000_000)
    assert time.process_time() - started < 1.0  # nothing was decoded
    assert caught.value.code == "too_many_pixels"
    assert str(caught.value) == (
        "The image is 20000x20000 pixels (400.0 megapixels); the limit is 100 megapixels. "
        "Please resize it (for example to 4000 pixels wide) and try again."
    )


def test_it_refuses_a_header_that_pillow_itself_calls_a_bomb() -> None:
    """Pillow's WebP plugin raises its own DecompressionBombError while reading the header (no size known)."""
    with pytest.raises(ImageDecodeError) as caught:
        image_decode(hostile.webp_bomb(16384), max_pixels=100_000_000)
    assert caught.value.code == "too_many_pixels"
    assert str(caught.value) == (
        "The image is 268.4 megapixels; the limit is 100 megapixels. "
        "Please resize it (for example to 4000 pixels wide) and try again."
    )


def test_it_never_shows_a_count_over_the_limit_as_equal_to_it() -> None:
    assert pixels_text(100_000_001, 100_000_000) == ("100.000001", "100")
    assert pixels_text(100_000_000, 100_000_000) == ("100.0", "100")
    assert pixels_text(150_000_000, 100_000_000) == ("150.0", "100")


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"", "empty", "The file is empty (0 bytes). Please use a photo saved as JPEG, PNG or WebP."),
        (
            b"hello\n" * 50,
            "not_an_image",
            "This file is text, not a photo. Please use a photo saved as JPEG, PNG or WebP.",
        ),
        (b"%PDF-1.7\n" + bytes(range(256)), "not_an_image", "This file is a PDF document, not a photo. "),
        (b"\x00\x00\x00\x18ftypheic" + bytes(64), "not_an_image", "This file is a HEIC photo, which this site"),
    ],
)
def test_it_says_what_a_file_that_is_not_a_picture_is(data: bytes, code: str, message: str) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        image_decode(data)
    assert caught.value.code == code and str(caught.value).startswith(message)


def test_it_refuses_formats_outside_the_accepted_list_and_tiny_pictures() -> None:
    with pytest.raises(
        ImageDecodeError, match=r"^TIFF images are not accepted here\. Please use a photo saved as JPEG or PNG\.$"
    ):
        image_decode(encode(draw_car(), "TIFF"), formats=("JPEG", "PNG"))
    with pytest.raises(
        ImageDecodeError, match=r"^The image is only 4000x10 pixels; it needs at least 16 pixels"
    ) as caught:
        image_decode(encode(Image.new("RGB", (4000, 10)), "PNG"), min_side=16)
    assert caught.value.code == "too_small"
    assert image_open(encode(draw_car(), "PNG")).size == (240, 120)


def test_it_reports_a_cut_short_file_as_corrupt() -> None:
    data = encode(draw_car((640, 320)), "PNG")
    with pytest.raises(ImageDecodeError) as caught:
        image_decode(data[: len(data) // 2])
    assert caught.value.code == "corrupt" and caught.value.detail


@pytest.mark.parametrize("orientation", range(1, 9))
def test_it_turns_strip_by_strip_exactly_as_a_whole_picture_turn(monkeypatch, orientation: int) -> None:
    monkeypatch.setattr(decode, "STRIP_PIXELS", 2000)  # many strips for a small picture
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(draw_car((97, 53), seed=3), "PNG", exif=exif)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(np.asarray(image_decode(data).image), np.asarray(expected))
    mirrored = np.asarray(image_decode(data, mirror=True).image)  # a flip, in the same pass
    assert np.array_equal(mirrored, np.asarray(ImageOps.mirror(expected)))
    big = encode(draw_car((972, 534), seed=3), "PNG", exif=exif)
    reduced = ImageOps.exif_transpose(Image.open(io.BytesIO(big))).convert("RGB").reduce(6)
    assert np.array_equal(np.asarray(image_decode(big, reduce_to=(50, 50)).image), np.asarray(reduced))


def test_it_keeps_within_its_memory_budget() -> None:
    png = encode(Image.new("RGB", (2000, 1000), (200, 40, 40)), "PNG")  # 8 MB of RGB cells once decoded
    with pytest.raises(ImageDecodeError) as caught:
        image_decode(png, max_bytes=5_000_000)
    assert caught.value.code == "too_many_pixels"
    assert str(caught.value) == (
        "The image is 2000x1000 pixels (2.0 megapixels) of RGB pixels: decoding it would take 8 MB of memory, "
        "more than the 5 MB allowed. Please save it as JPEG, or resize it to at most 1 megapixels, and try again."
    )
    jpeg = encode(Image.new("RGB", (2000, 1000), (200, 40, 40)), "JPEG")
    decoded = image_decode(jpeg, max_bytes=5_000_000)  # a JPEG is decoded smaller instead
    assert decoded.reduced and (decoded.width, decoded.height) == (2000, 1000)
    assert decoded.image.width * decoded.image.height * 8 <= 5_000_000
    assert _rgb(decoded, (10, 10)) == pytest.approx((200, 40, 40), abs=3)
