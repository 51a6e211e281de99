from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from PIL import Image

from reconstruct.curation import checks
from reconstruct.curation.models import DatasetImage
from reconstruct.curation.selectors import dataset_approved
from reconstruct.curation.services.arrival import (
    AddResult,
    CarLikenessScorer,
    dataset_image_add,
    dataset_image_add_many,
    zip_arrivals,
)
from reconstruct.curation.services.review import (
    dataset_image_approve,
    dataset_image_flip,
    dataset_image_reject,
    dataset_image_set_orientation,
)

pytestmark = pytest.mark.django_db

Source = DatasetImage.Source


def _add(data: bytes, name: str = "car.jpg", **kwargs) -> AddResult:
    return dataset_image_add(data=data, name=name, source=kwargs.pop("source", Source.BULK), **kwargs)


def test_it_stores_a_photo_as_pending_with_its_checks(active_model, staff, draw) -> None:
    data = draw(1)
    result = _add(data, name="../../etc/my car.jpg", added_by=staff)
    image = result.image
    assert result.added and not result.skipped
    assert image.status == DatasetImage.Status.PENDING
    assert image.original_name == "my car.jpg"
    assert image.file.name.startswith("dataset/") and "car" not in image.file.name
    with default_storage.open(image.file.name, "rb") as handle:
        assert handle.read() == data
    assert image.content_hash == checks.content_hash(data)
    assert (image.width, image.height, image.format) == (256, 110, "JPEG")
    assert not (image.too_small or image.greyscale or image.extreme_aspect)
    assert image.near_duplicate_of is None
    assert 0.0 <= image.car_likeness <= 1.0
    assert image.car_likeness_model == active_model.name
    assert default_storage.exists(image.thumbnail.name)


def test_it_skips_exact_duplicates_at_once(active_model, draw) -> None:
    first = _add(draw(1)).image
    again = _add(draw(1), name="copy.jpg")
    assert not again.added
    assert again.duplicate_of == first
    assert again.skipped == f"exact duplicate of #{first.pk}"
    assert DatasetImage.objects.count() == 1


def test_it_links_near_duplicates_and_mirrored_copies(active_model, draw, near_copy) -> None:
    first = _add(draw(1)).image
    other = _add(draw(2)).image
    resized = _add(near_copy(draw(1))).image
    mirrored_bytes = io.BytesIO()
    Image.open(io.BytesIO(draw(2))).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored_bytes, "PNG")
    mirrored = _add(mirrored_bytes.getvalue(), name="mirrored.png").image
    assert other.near_duplicate_of is None
    assert resized.near_duplicate_of == first and resized.near_duplicate_distance <= 6
    assert not resized.near_duplicate_mirrored
    assert mirrored.near_duplicate_of == other and mirrored.near_duplicate_mirrored


def test_it_honours_the_near_duplicate_threshold_setting(active_model, settings, draw, near_copy) -> None:
    settings.CURATION_NEAR_DUPLICATE_DISTANCE = 0
    _add(draw(1))
    copy = _add(near_copy(draw(1), scale=0.4, quality=40)).image
    assert copy.near_duplicate_of is None or copy.near_duplicate_distance == 0


def test_it_flags_small_grey_and_oddly_shaped_photos(active_model, draw) -> None:
    small = _add(draw(1, size=(100, 50))).image
    grey = _add(draw(2, grey=True)).image
    tall = _add(draw(3, size=(100, 220))).image
    assert small.too_small and not small.extreme_aspect
    assert grey.greyscale
    assert tall.extreme_aspect and not tall.too_small
    assert "greyscale" in AddResult("g", image=grey).flags()


def test_it_reports_unreadable_files_without_storing_anything(active_model, media) -> None:
    result = _add(b"<html>not a photo</html>", name="page.html")
    assert not result.added
    assert (
        result.skipped == "This file is a web page (HTML), not a photo. Please use a photo saved as JPEG, PNG or WebP."
    )
    assert DatasetImage.objects.count() == 0
    assert not (media / "dataset").exists()


def test_it_adds_many_with_a_report(active_model, staff, draw, near_copy) -> None:
    arrivals = [
        ("a.jpg", lambda: draw(1)),
        ("b.jpg", lambda: draw(2)),
        ("a-again.jpg", lambda: draw(1)),
        ("a-small.jpg", lambda: near_copy(draw(1))),
        ("broken.jpg", lambda: b"garbage"),
    ]
    seen = []
    report = dataset_image_add_many(arrivals=arrivals, source=Source.BULK, added_by=staff, progress=seen.append)
    assert [r.name for r in report.added] == ["a.jpg", "b.jpg", "a-small.jpg"]
    assert [r.name for r in report.skipped] == ["a-again.jpg", "broken.jpg"]
    assert len(report.flagged) == 1 and "near duplicate" in report.flagged[0].flags()[0]
    assert len(seen) == 5
    assert report.to_dict()["added"] == 3


def test_it_reads_photos_from_a_zip_and_skips_junk(active_model, draw) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cars/one.jpg", draw(1))
        zf.writestr("cars/two.png", draw(2, fmt="PNG"))
        zf.writestr("__MACOSX/cars/._one.jpg", b"resource fork")
        zf.writestr("notes.txt", b"hello")
        zf.writestr("cars/", b"")
    archive.seek(0)
    report = dataset_image_add_many(arrivals=zip_arrivals(archive), source=Source.BULK)
    assert sorted(r.name for r in report.added) == ["one.jpg", "two.png"]
    assert [r.name for r in report.skipped] == ["notes.txt"]


def test_it_refuses_a_damaged_zip_and_oversized_members(active_model, settings, draw) -> None:
    with pytest.raises(ValidationError, match="not a zip"):
        list(zip_arrivals(io.BytesIO(b"PK not really")))
    settings.CURATION_MAX_IMAGE_BYTES = 2048
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.png", b"\0" * 100_000)
    archive.seek(0)
    report = dataset_image_add_many(arrivals=zip_arrivals(archive), source=Source.BULK)
    assert report.skipped[0].skipped == "the file is 97.7 KB; the limit is 2.0 KB"


def test_it_approves_rejects_and_orients_current_images(active_model, staff, draw) -> None:
    a, b = _add(draw(1)).image, _add(draw(2)).image
    everything = DatasetImage.objects.all()
    assert dataset_image_approve(images=everything.filter(pk=a.pk), user=staff) == 1
    assert dataset_image_reject(images=everything.filter(pk=b.pk), user=staff) == 1
    assert dataset_image_set_orientation(images=everything, orientation=DatasetImage.Orientation.RIGHT, user=staff) == 2
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.status, b.status) == ("approved", "rejected")
    assert a.reviewed_by == staff and a.orientation == "right"
    with pytest.raises(ValidationError):
        dataset_image_set_orientation(images=everything, orientation="upside-down", user=staff)


def test_it_flips_into_a_new_version_and_keeps_the_original(active_model, staff, draw) -> None:
    data = draw(1, facing_left=False)
    original = _add(data).image
    dataset_image_approve(images=DatasetImage.objects.filter(pk=original.pk), user=staff)
    dataset_image_set_orientation(images=DatasetImage.objects.filter(pk=original.pk), orientation="right", user=staff)
    original.refresh_from_db()

    flipped = dataset_image_flip(image=original, user=staff)
    original.refresh_from_db()
    assert flipped.parent == original and flipped.derivation == "flip"
    assert flipped.is_current and not original.is_current
    assert (flipped.status, flipped.orientation) == ("approved", "left")
    with default_storage.open(original.file.name, "rb") as handle:
        assert handle.read() == data  # the original's bytes are untouched
    with default_storage.open(flipped.file.name, "rb") as handle:
        pixels = np.asarray(Image.open(handle).convert("L"), dtype=float)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)[:, ::-1]
    assert np.abs(pixels - reference).mean() < 2
    assert list(dataset_approved()) == [flipped]

    # Flipping back restores the original itself (no twice re-encoded copy), and again reuses the flip.
    restored = dataset_image_flip(image=flipped, user=staff)
    assert restored == original and restored.is_current and restored.orientation == "right"
    assert dataset_image_flip(image=restored, user=staff) == flipped
    assert DatasetImage.objects.count() == 2
    with pytest.raises(ValidationError, match="older version"):
        dataset_image_flip(image=original, user=staff)


def test_it_still_adds_photos_when_no_model_can_score_them(media, db, draw) -> None:
    scorer = CarLikenessScorer()
    scorer._loaded = True  # as after a failed load: the checks must not depend on a model
    result = dataset_image_add(data=draw(1), name="a.jpg", source=Source.IMPORT, scorer=scorer)
    assert result.added and result.image.car_likeness is None
