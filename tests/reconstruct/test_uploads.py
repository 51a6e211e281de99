"""upload_prepare: the real decode, limits, EXIF orientation and metadata, transparency."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from PIL import Image

from ml.decode import image_decode
from reconstruct.services.uploads import UploadTooLarge, upload_prepare
from tests.support import draw_car, encode, upload


def test_it_accepts_a_png_car(car_png: bytes) -> None:
    prepared = upload_prepare(upload(car_png, "my car.png"))
    assert (prepared.format, prepared.extension, prepared.width, prepared.height) == ("PNG", "png", 240, 120)
    assert prepared.name == "my car.png"
    assert Image.open(io.BytesIO(prepared.thumbnail)).format == "JPEG"


def test_it_stores_a_phone_jpeg_upright_without_its_metadata(exif_rotated_jpeg: bytes) -> None:
    assert Image.open(io.BytesIO(exif_rotated_jpeg)).size == (120, 240)
    prepared = upload_prepare(upload(exif_rotated_jpeg, "IMG_0001.JPG"))
    stored = Image.open(io.BytesIO(prepared.content))
    assert stored.size == (240, 120) == (prepared.width, prepared.height)
    assert stored.format == "JPEG"
    assert dict(stored.getexif()) == {}


def test_it_keeps_transparency_in_a_png(transparent_png: bytes) -> None:
    prepared = upload_prepare(upload(transparent_png))
    stored = Image.open(io.BytesIO(prepared.content))
    assert stored.mode == "RGBA"
    assert stored.getpixel((0, 0))[3] == 0


def test_it_converts_formats_browsers_cannot_show_to_png() -> None:
    prepared = upload_prepare(upload(encode(draw_car(), "TIFF"), "car.tiff"))
    assert (prepared.format, prepared.extension) == ("TIFF", "png")
    assert Image.open(io.BytesIO(prepared.content)).format == "PNG"


def test_it_refuses_a_file_that_is_not_an_image(not_an_image: bytes) -> None:
    with pytest.raises(ValidationError, match="This file is a PDF document, not a photo") as error:
        upload_prepare(upload(not_an_image, "car.jpg"))
    assert error.value.code == "not_an_image"


def test_it_refuses_a_truncated_jpeg(car_jpeg: bytes) -> None:
    with pytest.raises(ValidationError, match="could not be decoded"):
        upload_prepare(upload(car_jpeg[: len(car_jpeg) // 2], "cut.jpg"))


def test_it_refuses_an_empty_file() -> None:
    with pytest.raises(ValidationError, match="empty"):
        upload_prepare(upload(b"", "empty.jpg"))


def test_it_refuses_too_many_pixels_before_decoding_them(settings, car_png: bytes) -> None:
    settings.RECONSTRUCT_MAX_IMAGE_PIXELS = 10_000
    with pytest.raises(ValidationError) as error:
        upload_prepare(upload(car_png))
    assert error.value.messages == [
        "The image is 240x120 pixels (0.03 megapixels); the limit is 0.01 megapixels. "
        "Please resize it (for example to 4000 pixels wide) and try again."
    ]
    assert error.value.code == "too_many_pixels"


def test_it_refuses_a_file_over_the_byte_limit(settings, car_png: bytes) -> None:
    settings.RECONSTRUCT_MAX_UPLOAD_BYTES = 200
    with pytest.raises(UploadTooLarge, match="the limit is 200 bytes"):
        upload_prepare(upload(car_png))


def test_it_refuses_a_tiny_image() -> None:
    with pytest.raises(ValidationError, match="at least 16 pixels"):
        upload_prepare(upload(encode(draw_car((40, 8)), "PNG")))


def test_it_keeps_an_upright_jpeg_s_quality_and_drops_its_metadata() -> None:
    exif = Image.Exif()
    exif[0x8825] = {2: (52.0, 31.0, 0.0)}  # GPS latitude: where the photo was taken
    photo = encode(draw_car((800, 400)), "JPEG", quality=80, exif=exif)
    prepared = upload_prepare(upload(photo, "phone.jpg"))
    stored = Image.open(io.BytesIO(prepared.content))
    assert dict(stored.getexif()) == {}
    # Re-saved with the photo's own quantisation tables: no second round of compression.
    assert stored.quantization == Image.open(io.BytesIO(photo)).quantization
    assert abs(len(prepared.content) - len(photo)) < 0.1 * len(photo)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_display_p3_photo_is_stored_as_its_own_picture_with_its_colour_profile(fmt: str) -> None:
    # A phone's Display P3 photo: its own compressed picture and profile (browsers apply it), nothing else of its
    # metadata; the site's decode of the stored copy (thumbnail, model) is exactly the upload's.
    from tests import hostile

    profile = hostile.display_p3_profile()
    exif = Image.Exif()
    exif[0x8825] = {2: (52.0, 31.0, 0.0)}  # GPS latitude
    source = Image.open(io.BytesIO(hostile.p3_jpeg((640, 320))))
    options = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    photo = encode(source, fmt, icc_profile=profile, exif=exif, **options)
    prepared = upload_prepare(upload(photo, f"phone.{fmt.lower()}"))
    stored = Image.open(io.BytesIO(prepared.content))
    assert stored.format == fmt and stored.info["icc_profile"] == profile
    assert dict(stored.getexif()) == {}
    if fmt == "JPEG":
        assert stored.quantization == source.quantization  # not compressed a second time
    assert prepared.decoded is not None and prepared.decoded.icc_converted
    again = image_decode(prepared.content)
    assert again.icc_converted and again.image.tobytes() == image_decode(photo).image.tobytes()
    body = again.image.getpixel((int(640 * 0.7), int(320 * 0.5)))
    assert max(abs(a - b) for a, b in zip(body, hostile.P3_BODY_SRGB, strict=True)) <= 3, body


def test_a_turned_display_p3_photo_is_stored_upright_with_its_colour_profile() -> None:
    # Turned upright, so encoded anew, but not converted to sRGB first: the profile goes with the new encoding.
    from tests import hostile

    profile = hostile.display_p3_profile()
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = Image.open(io.BytesIO(hostile.p3_jpeg((640, 320)))).transpose(Image.Transpose.ROTATE_90)
    photo = encode(sideways, "JPEG", quality=95, icc_profile=profile, exif=exif)
    prepared = upload_prepare(upload(photo, "phone.jpg"))
    stored = Image.open(io.BytesIO(prepared.content))
    assert stored.size == (640, 320) and stored.info["icc_profile"] == profile and dict(stored.getexif()) == {}
    shown, sent = image_decode(prepared.content), image_decode(photo)
    assert shown.icc_converted and shown.image.size == sent.image.size == (640, 320)
    difference = np.abs(np.asarray(shown.image, dtype=int) - np.asarray(sent.image, dtype=int))
    assert difference.mean() < 1.5  # one more round of JPEG compression
    body = shown.image.getpixel((int(640 * 0.7), int(320 * 0.5)))
    assert max(abs(a - b) for a, b in zip(body, hostile.P3_BODY_SRGB, strict=True)) <= 3, body


@pytest.mark.parametrize("with_profile", [False, True])
def test_a_jpeg_stored_anew_keeps_none_of_its_comments(with_profile: bool) -> None:
    # A stray byte between two segments: libjpeg skips it, the byte-for-byte copy does not, so the picture is
    # encoded anew; Pillow's JPEG writer would carry the file's comment over unless told otherwise.
    from tests import hostile

    profile = {"icc_profile": hostile.display_p3_profile()} if with_profile else {}
    photo = encode(draw_car((96, 64)), "JPEG", quality=95, comment=b"GPS 52.1N 4.3E home", **profile)
    tables = photo.index(b"\xff\xdb")
    prepared = upload_prepare(upload(photo[:tables] + b"\x00" + photo[tables:], "stray.jpg"))
    stored = Image.open(io.BytesIO(prepared.content))
    assert "comment" not in stored.info and dict(stored.getexif()) == {}
    assert bool(stored.info.get("icc_profile")) == with_profile


def test_a_grey_png_with_an_rgb_profile_is_stored_in_srgb() -> None:
    # A PNG may not carry an RGB profile on grey pixels (browsers may ignore it); the site's decode applies it.
    from tests import hostile

    photo = encode(draw_car((96, 64)).convert("LA"), "PNG", icc_profile=hostile.display_p3_profile())
    prepared = upload_prepare(upload(photo, "grey.png"))
    stored = Image.open(io.BytesIO(prepared.content))
    assert "icc_profile" not in stored.info and prepared.decoded is None
    difference = np.abs(
        np.asarray(image_decode(prepared.content).image, dtype=int) - np.asarray(image_decode(photo).image, dtype=int)
    )
    assert difference.max() <= 1


def test_a_one_frame_animated_png_is_stored_as_the_picture_it_shows() -> None:
    # An APNG's frame control says how its picture is read; cutting it out with the metadata (as for a plain PNG)
    # stored another picture. Here the frame control (against the specification) covers a quarter of the canvas.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    width, height = 120, 90
    rows = np.random.default_rng(0).integers(0, 5, (height, width, 3), dtype=np.uint8)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"acTL", struct.pack(">II", 1, 0))
        + chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, width // 2, height // 2, 0, 0, 1, 10, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row.tobytes() for row in rows)))
        + chunk(b"IEND", b"")
    )
    prepared = upload_prepare(upload(png, "one-frame.png"))
    assert prepared.decoded is None  # stored anew: sync mode decodes what was stored
    shown = image_decode(png).image
    stored = image_decode(prepared.content).image
    assert stored.size == shown.size and stored.tobytes() == shown.tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_it_stores_a_png_or_webp_as_its_own_picture_without_metadata(fmt: str) -> None:
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x8825] = {2: (52.0, 31.0, 0.0)}  # GPS latitude
    options: dict = {"exif": exif}
    if fmt == "PNG":
        options["pnginfo"] = PngImagePlugin.PngInfo()
        options["pnginfo"].add_text("Author", "someone")
    else:
        options["lossless"] = True
    photo = encode(draw_car(), fmt, **options)
    prepared = upload_prepare(upload(photo, f"car.{fmt.lower()}"))
    stored = Image.open(io.BytesIO(prepared.content))
    assert stored.format == fmt and dict(stored.getexif()) == {} and "Author" not in stored.info
    assert stored.tobytes() == Image.open(io.BytesIO(photo)).tobytes()  # the same pixels, not encoded again
    assert len(prepared.content) < len(photo)


def test_the_stored_copy_keeps_a_scan_with_restart_markers_and_fill_bytes_byte_for_byte() -> None:
    from reconstruct.images import jpeg_without_metadata

    out = io.BytesIO()
    draw_car((320, 160), seed=4).save(out, "JPEG", quality=95, restart_marker_blocks=1, comment=b"taken at home")
    photo = out.getvalue()
    start = photo.index(b"\xff\xda")
    end = photo.rindex(b"\xff\xd9")
    scan = photo[start:end]
    assert scan.count(b"\xff\x00") > 0 and scan.count(b"\xff\xd0") > 0  # stuffed bytes and restart markers
    # Fill bytes (any number of 0xFF) may precede the end-of-image marker (ITU T.81, B.1.1.2).
    padded = photo[:end] + b"\xff\xff\xff" + photo[end:]
    stripped = jpeg_without_metadata(padded)
    assert b"taken at home" not in stripped
    assert scan in stripped and stripped.endswith(b"\xff\xd9")
    same = Image.open(io.BytesIO(stripped)).convert("RGB").tobytes()
    assert same == Image.open(io.BytesIO(photo)).convert("RGB").tobytes()
    with pytest.raises(ValueError, match="scan cut short"):
        jpeg_without_metadata(photo[: start + len(scan) // 2])


def test_a_large_jpeg_is_decoded_for_its_thumbnail_at_twice_the_thumbnail_size(monkeypatch) -> None:
    from reconstruct.services import uploads

    decoded_sizes = []

    def spy(*args, **kwargs):
        decoded = image_decode(*args, **kwargs)
        decoded_sizes.append(decoded.image.size)
        return decoded

    monkeypatch.setattr(uploads, "image_decode", spy)
    prepared = upload_prepare(upload(encode(draw_car((1920, 960)), "JPEG"), "big.jpg"))
    # 1920x960 fits 480x480 at 1/4: libjpeg's 1/2 keeps twice that (Pillow's Image.thumbnail rule), where three
    # times would have meant a whole decode.
    assert decoded_sizes == [(960, 480)]
    assert (prepared.width, prepared.height) == (1920, 960)
    assert Image.open(io.BytesIO(prepared.thumbnail)).size == (480, 240)


def test_a_result_picture_is_stored_as_a_lossless_png() -> None:
    import io

    import numpy as np
    from PIL import Image

    from reconstruct.images import png_bytes

    pixels = np.random.default_rng(0).integers(0, 256, (64, 113, 3), dtype=np.uint8)
    pixels[:, :40] = (200, 30, 30)  # a flat run, as in a car's body: the run-length strategy's case
    data = png_bytes(Image.fromarray(pixels, "RGB"))
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded), pixels)
