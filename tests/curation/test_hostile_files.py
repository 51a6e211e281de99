"""Hostile and unusual files (tests/hostile.py) through the admin's bulk upload, as files and in a zip: each is
added or skipped with its exact reason, with no 500 and nothing left behind; the checks, thumbnails and flips
decode as uploads do (16-bit greyscale, transparency on white, Display P3 to sRGB, broken EXIF)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.urls import reverse
from django.utils.html import escape
from PIL import Image

from ml.decode import image_decode
from reconstruct.curation import checks
from reconstruct.curation.models import DatasetImage
from reconstruct.curation.services.arrival import ZIP_MEMBER_DAMAGED, ZIP_MEMBER_ENCRYPTED, ZIP_MEMBER_METHOD
from reconstruct.curation.services.review import dataset_image_flip
from reconstruct.http import LENGTH_REQUIRED
from reconstruct.images import display_name
from tests import hostile
from tests.support import draw_car, encode

CASES = hostile.cases()


@pytest.fixture
def upload_json(client, staff, active_model):
    client.force_login(staff)
    url = reverse("admin:curation_datasetimage_upload")

    def send(**files):
        response = client.post(url, files, headers={"Accept": "application/json"})
        assert response.status_code == 200, response.content[:500]
        return response.json()

    return send


def _named(name: str, data: bytes) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


def _zipped(members: list[tuple[str, bytes]]) -> io.BytesIO:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return _named("photos.zip", out.getvalue())


def _dataset_files(media: Path) -> set[str]:
    folder = media / "dataset"
    return {str(p.relative_to(media)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def _check_report(report: dict, names: list[str], media: Path) -> None:
    rows = report["results"]
    assert [r["name"] for r in rows] == names
    for case, row in zip(CASES, rows, strict=True):
        if case.dataset is None:
            assert row["added"] or row["skipped"].startswith("exact duplicate of #"), (case.label, row)
        else:
            assert (row["added"], row["skipped"]) == (False, case.dataset), case.label
    added = DatasetImage.objects.all()
    assert added.count() == report["added"]
    # Every file in storage belongs to a row (the photo and its thumbnail); refused files left nothing.
    assert _dataset_files(media) == {name for image in added for name in (image.file.name, image.thumbnail.name)}


def test_each_file_is_added_or_skipped_with_its_exact_reason(upload_json, media) -> None:
    report = upload_json(files=[_named(c.filename, c.data) for c in CASES])
    _check_report(report, [display_name(c.filename, default="photo") for c in CASES], media)


def test_each_file_in_a_zip_is_added_or_skipped_with_its_exact_reason(upload_json, media) -> None:
    names = [f"cases/{i:02d}-{display_name(c.filename, default='photo')}" for i, c in enumerate(CASES)]
    report = upload_json(archive=_zipped([(n, c.data) for n, c in zip(names, CASES, strict=True)]))
    _check_report(report, [display_name(n, default="photo") for n in names], media)


def test_a_damaged_zip_member_is_skipped_and_the_others_added(upload_json, media) -> None:
    photos = [(f"{i}.jpg", encode(draw_car((320, 160), seed=i), "JPEG"), zipfile.ZIP_DEFLATED) for i in range(4)]
    photos[2] = ("2.jpg", photos[2][1], zipfile.ZIP_LZMA)
    report = upload_json(archive=_named("cars.zip", hostile.member_damaged_zip(photos, damaged=[1, 2])))
    assert [(r["name"], r["added"], r["skipped"]) for r in report["results"]] == [
        ("0.jpg", True, ""),
        ("1.jpg", False, ZIP_MEMBER_DAMAGED),
        ("2.jpg", False, ZIP_MEMBER_DAMAGED),
        ("3.jpg", True, ""),
    ]
    assert DatasetImage.objects.count() == 2


def test_an_encrypted_or_unknown_method_member_is_skipped_with_a_reason_a_person_understands(upload_json) -> None:
    photos = [(f"{i}.jpg", encode(draw_car((320, 160), seed=i), "JPEG")) for i in range(3)]
    for patch, reason in (
        ({"flag": 1}, ZIP_MEMBER_ENCRYPTED),
        ({"method": 99}, ZIP_MEMBER_METHOD.format(99)),
        ({"method": 93}, ZIP_MEMBER_METHOD.format(93)),
    ):
        DatasetImage.objects.all().delete()
        report = upload_json(archive=_named("cars.zip", hostile.zip_member_patched(photos, 1, **patch)))
        assert [(r["name"], r["added"], r["skipped"]) for r in report["results"]] == [
            ("0.jpg", True, ""),
            ("1.jpg", False, reason),
            ("2.jpg", True, ""),
        ]
    assert "ZipInfo" not in ZIP_MEMBER_ENCRYPTED + ZIP_MEMBER_METHOD


def test_zip_member_names_from_windows_and_macos(upload_json) -> None:
    photos = [
        ("Käfer.jpg", encode(draw_car((320, 160), seed=1), "JPEG")),
        ("Ünï/Ça.jpg", encode(draw_car(seed=2), "PNG")),
    ]
    report = upload_json(archive=_named("mac.zip", hostile.zip_without_utf8_flag(photos)))
    assert [r["name"] for r in report["results"]] == ["Käfer.jpg", "Ça.jpg"]
    members = [
        ("cars\\old\\three.jpg", encode(draw_car((320, 160), seed=3), "JPEG")),
        ("../../../etc/four.jpg", encode(draw_car((320, 160), seed=4), "JPEG")),
        ("/abs/" + "f" * 300 + ".jpg", encode(draw_car((320, 160), seed=5), "JPEG")),
    ]
    report = upload_json(archive=_zipped(members))
    names = ["three.jpg", "four.jpg", "f" * 251 + ".jpg"]
    assert [(r["name"], r["added"]) for r in report["results"]] == [(name, True) for name in names]
    assert all(image.file.name.startswith("dataset/") for image in DatasetImage.objects.all())
    assert DatasetImage.objects.filter(original_name="three.jpg").exists()


def _stored(image: DatasetImage) -> Image.Image:
    with image.file.open("rb") as handle:
        return image_decode(handle.read()).image


def _thumbnail(image: DatasetImage) -> Image.Image:
    with image.thumbnail.open("rb") as handle:
        return Image.open(io.BytesIO(handle.read())).convert("RGB")


def test_16_bit_greyscale_is_decoded_as_uploads_are(upload_json, staff) -> None:
    (one, expected), (two, _) = hostile.grey16_png(1), hostile.grey16_png(2)
    report = upload_json(files=[_named("grey1.png", one), _named("grey2.png", two)])
    assert report["added"] == 2 and report["flagged"] == 2
    first, second = DatasetImage.objects.order_by("id")
    assert second.near_duplicate_of_id is None  # two different cars, not one white picture twice
    assert checks.hamming(int(first.phash, 16), int(second.phash, 16)) > settings.CURATION_NEAR_DUPLICATE_DISTANCE
    assert first.greyscale and first.car_likeness is not None
    grey = np.asarray(_thumbnail(first).convert("L"), dtype=np.float64)
    assert abs(grey.mean() - expected.mean()) < 4
    flipped = dataset_image_flip(image=first, user=staff)
    mirrored = np.asarray(_stored(flipped).convert("L"), dtype=np.float64)
    assert np.abs(mirrored - expected[:, ::-1]).mean() < 2  # the mirrored car, not a white picture


def test_a_transparent_cutout_is_on_white_everywhere(upload_json, staff) -> None:
    cutout, on_white = hostile.cutout_pair()
    report = upload_json(files=[_named("cutout.png", cutout), _named("on_white.jpg", on_white)])
    assert report["added"] == 2
    first, second = DatasetImage.objects.order_by("id")
    assert second.near_duplicate_of_id == first.pk and second.near_duplicate_distance <= 6
    assert min(_thumbnail(first).getpixel((1, 1))) >= 250
    flipped = dataset_image_flip(image=first, user=staff)
    assert _stored(flipped).getpixel((1, 1)) == (255, 255, 255)


def test_a_display_p3_photo_is_converted_to_srgb_in_thumbnails_and_flips(upload_json, staff) -> None:
    upload_json(files=[_named("p3.jpg", hostile.p3_jpeg())])
    image = DatasetImage.objects.get()
    for picture in (_thumbnail(image), _stored(dataset_image_flip(image=image, user=staff))):
        body = picture.getpixel((picture.width // 2, picture.height // 2))
        assert max(abs(a - b) for a, b in zip(body, hostile.P3_BODY_SRGB, strict=True)) <= 4, body


def test_broken_exif_is_ignored_when_scoring_car_likeness(upload_json) -> None:
    report = upload_json(files=[_named(f"{k}.jpg", v) for k, v in hostile.broken_exif_jpegs().items()])
    assert report["skipped"] == 0
    assert all(image.car_likeness is not None for image in DatasetImage.objects.all())


def test_a_chunked_bulk_upload_is_refused_with_411(client, staff, media) -> None:
    client.force_login(staff)
    url = reverse("admin:curation_datasetimage_upload")
    body = b'--B\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\nxx\r\n--B--\r\n'
    headers = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "HTTP_ACCEPT": "application/json"}
    response = client.generic("POST", url, body, content_type="multipart/form-data; boundary=B", **headers)
    assert response.status_code == 411 and response.json() == {"error": LENGTH_REQUIRED, "code": "length_required"}
    headers.pop("HTTP_ACCEPT")
    page = client.generic("POST", url, body, content_type="multipart/form-data; boundary=B", **headers)
    assert page.status_code == 200 and escape(LENGTH_REQUIRED) in page.content.decode()
    assert DatasetImage.objects.count() == 0
