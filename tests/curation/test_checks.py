from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from reconstruct.curation import checks


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_it_hashes_content_exactly(draw) -> None:
    data = draw(1)
    assert checks.content_hash(data) == checks.content_hash(bytes(data))
    assert checks.content_hash(data) != checks.content_hash(data + b"\0")
    assert len(checks.content_hash(data)) == 64


def test_it_gives_near_copies_close_perceptual_hashes(draw, near_copy) -> None:
    original = _open(draw(1))
    copy = _open(near_copy(draw(1), scale=0.6, quality=60))
    other = _open(draw(2))
    for hash_fn in (checks.phash, checks.dhash):
        assert checks.hamming(hash_fn(original), hash_fn(copy)) <= 6
        assert checks.hamming(hash_fn(original), hash_fn(other)) > 10


def test_it_counts_differing_bits_vectorised() -> None:
    others = np.array([0, 0xFF, 2**64 - 1, 0b1010], dtype=np.uint64)
    assert checks.hamming_many(0, others).tolist() == [0, 8, 64, 2]
    assert checks.hamming(0b1100, 0b1010) == 2


def test_it_finds_mirrored_copies_through_the_mirrored_hash(draw) -> None:
    data = draw(3)
    facts, _ = checks.examine(data)
    mirrored = ImageOps.mirror(_open(data))
    assert checks.hamming(facts.phash_mirrored, checks.phash(mirrored)) <= 2
    assert checks.hamming(facts.phash, checks.phash(mirrored)) > 6


def test_it_flags_size_aspect_and_greyscale(draw) -> None:
    assert checks.is_too_small(100, 50, 128, 64)
    assert not checks.is_too_small(100, 80, 128, 64)  # tall enough to fill the frame's height
    assert checks.is_extreme_aspect(100, 200, 1.2, 4.2)
    assert checks.is_extreme_aspect(500, 100, 1.2, 4.2)
    assert not checks.is_extreme_aspect(256, 110, 1.2, 4.2)
    assert checks.examine(draw(4, grey=True))[0].greyscale
    assert not checks.examine(draw(4))[0].greyscale


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"The file is empty \(0 bytes\)\. Please use a photo saved as JPEG, PNG or WebP\."),
        (b"not a picture at all", r"This file is text, not a photo\. Please use a photo saved as JPEG, PNG or WebP\."),
    ],
)
def test_it_refuses_what_is_not_a_photo(data: bytes, message: str) -> None:
    with pytest.raises(checks.CheckError, match=message):
        checks.examine(data)


def test_it_refuses_truncated_files_and_other_formats(draw) -> None:
    with pytest.raises(checks.CheckError, match="damaged or cut short"):
        checks.examine(draw(5)[:600])
    gif = io.BytesIO()
    Image.new("RGB", (200, 100), "red").save(gif, "GIF")
    with pytest.raises(
        checks.CheckError, match=r"^GIF images are not accepted here\. Please use a photo saved as JPEG, PNG or WebP\.$"
    ):
        checks.examine(gif.getvalue())


def test_it_refuses_pictures_over_the_pixel_limit(draw) -> None:
    with pytest.raises(checks.CheckError, match=r"256x110 pixels \(0\.03 megapixels\); the limit is 0\.001 megapixels"):
        checks.examine(draw(6), max_pixels=1000)


def test_it_examines_the_upright_picture(draw) -> None:
    image = _open(draw(7, size=(200, 90)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    facts, upright = checks.examine(out.getvalue())
    assert (facts.width, facts.height) == (90, 200)
    assert upright.size == (90, 200)


def test_it_makes_small_jpeg_thumbnails(draw) -> None:
    thumb = Image.open(io.BytesIO(checks.thumbnail(_open(draw(8, size=(800, 300))))))
    assert thumb.format == "JPEG"
    assert thumb.size == (240, 90)
