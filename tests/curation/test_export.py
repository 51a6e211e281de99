from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile

import pytest
from django.core.exceptions import ValidationError

from reconstruct.curation.models import DatasetImage
from reconstruct.curation.selectors import dataset_approved
from reconstruct.curation.services.arrival import dataset_image_add
from reconstruct.curation.services.export import dataset_export_zip, dataset_snapshot_create
from reconstruct.curation.services.review import (
    dataset_image_approve,
    dataset_image_flip,
    dataset_image_reject,
    dataset_image_set_orientation,
)

pytestmark = pytest.mark.django_db


def _approved_set(draw, staff) -> list[DatasetImage]:
    for seed in range(4):
        dataset_image_add(data=draw(seed), name=f"c{seed}.jpg", source="import")
    images = list(DatasetImage.objects.order_by("id"))
    dataset_image_approve(images=DatasetImage.objects.filter(pk__in=[i.pk for i in images[:3]]), user=staff)
    dataset_image_set_orientation(images=DatasetImage.objects.filter(pk=images[0].pk), orientation="right", user=staff)
    dataset_image_flip(image=images[0], user=staff)  # the flipped version replaces it in the set
    return images


def _check_zip(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
        for row in manifest["images"]:
            assert hashlib.sha256(zf.read(row["file"])).hexdigest() == row["sha256"]
        assert [r["file"] for r in rows] == [r["file"] for r in manifest["images"]]
        assert "README.txt" in zf.namelist()
    return manifest


def test_it_exports_the_approved_set_with_a_verifiable_manifest(media, active_model, staff, draw) -> None:
    images = _approved_set(draw, staff)
    out = io.BytesIO()
    assert dataset_export_zip(out=out) == 3
    manifest = _check_zip(out.getvalue())
    flipped = DatasetImage.objects.get(parent=images[0])
    assert [r["id"] for r in manifest["images"]] == [images[1].pk, images[2].pk, flipped.pk]
    assert manifest["images"][2]["orientation"] == "left" and manifest["images"][2]["source"] == "import"
    assert manifest["snapshot"] is None


def test_it_freezes_snapshots_that_later_review_does_not_change(on_s3, media, active_model, staff, draw) -> None:
    images = _approved_set(draw, staff)
    snapshot = dataset_snapshot_create(user=staff, note="before")
    dataset_image_reject(images=DatasetImage.objects.all(), user=staff)
    assert dataset_approved().count() == 0
    out = io.BytesIO()
    assert dataset_export_zip(out=out, snapshot=snapshot) == 3  # read back from S3 (moto over HTTP)
    manifest = _check_zip(out.getvalue())
    assert manifest["snapshot"] == snapshot.pk and manifest["manifest_sha256"] == snapshot.manifest_sha256
    with pytest.raises(ValidationError, match="no approved images"):
        dataset_snapshot_create(user=staff)
    with pytest.raises(Exception, match="protected"):
        images[1].delete()  # an image a snapshot names cannot disappear
