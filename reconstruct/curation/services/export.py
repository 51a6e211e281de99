"""Freezing the approved set into snapshots, and exporting it (or a snapshot) as a zip with its manifest."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from reconstruct.curation.models import DatasetSnapshot, DatasetSnapshotItem
from reconstruct.curation.selectors import dataset_approved

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


def _manifest_digest(rows: Iterable[tuple[int, str, str]]) -> str:
    digest = hashlib.sha256()
    for image_id, content_hash, orientation in rows:
        digest.update(f"{image_id}:{content_hash}:{orientation}\n".encode())
    return digest.hexdigest()


def dataset_snapshot_create(*, user: AbstractBaseUser | None, note: str = "") -> DatasetSnapshot:
    """Freeze the approved set into an immutable manifest (ids, storage keys, hashes, orientation)."""
    with transaction.atomic():
        images = list(dataset_approved().values_list("id", "file", "content_hash", "orientation", "source"))
        if not images:
            raise ValidationError("There are no approved images yet: approve some photos first.")
        snapshot = DatasetSnapshot.objects.create(
            created_by=user,
            note=note[:200],
            image_count=len(images),
            manifest_sha256=_manifest_digest((i, h, o) for i, _, h, o, _ in images),
        )
        DatasetSnapshotItem.objects.bulk_create(
            [
                DatasetSnapshotItem(
                    snapshot=snapshot, image_id=i, file_key=key, content_hash=h, orientation=o, source=s
                )
                for i, key, h, o, s in images
            ],
            batch_size=500,
        )
    return snapshot


@dataclass(frozen=True)
class ManifestRow:
    """One photo of a snapshot (or of the approved set) as the export writes it."""

    image_id: int
    file_key: str
    content_hash: str
    orientation: str
    source: str

    @property
    def archive_name(self) -> str:
        extension = self.file_key.rsplit(".", 1)[-1]
        return f"images/{self.image_id:06d}-{self.content_hash[:12]}.{extension}"


def dataset_manifest(snapshot: DatasetSnapshot | None = None) -> list[ManifestRow]:
    """The rows of a snapshot, or of the approved set as it is now."""
    if snapshot is not None:
        rows = snapshot.items.order_by("image_id").values_list(
            "image_id", "file_key", "content_hash", "orientation", "source"
        )
    else:
        rows = dataset_approved().values_list("id", "file", "content_hash", "orientation", "source")
    return [ManifestRow(*row) for row in rows]


def dataset_export_zip(*, out: IO[bytes], snapshot: DatasetSnapshot | None = None) -> int:
    """Write the approved set (or a snapshot) to ``out`` as a zip: images/, manifest.csv, manifest.json.

    Each photo is copied from storage into the archive in chunks, so memory stays flat however
    large the set; photos are stored uncompressed (JPEG does not compress further). Returns the
    number of images.
    """
    rows = dataset_manifest(snapshot)
    manifest = [
        {
            "file": row.archive_name,
            "sha256": row.content_hash,
            "orientation": row.orientation,
            "source": row.source,
            "id": row.image_id,
        }
        for row in rows
    ]
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for row in rows:
            with (
                default_storage.open(row.file_key, "rb") as source,
                zf.open(row.archive_name, "w", force_zip64=True) as target,
            ):
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    target.write(chunk)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["file", "sha256", "orientation", "source", "id"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(manifest)
        zf.writestr("manifest.csv", text.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
        described = {
            "exported_at": timezone.now().isoformat(timespec="seconds"),
            "snapshot": snapshot.pk if snapshot else None,
            "manifest_sha256": _manifest_digest((r.image_id, r.content_hash, r.orientation) for r in rows),
            "images": manifest,
        }
        zf.writestr("manifest.json", json.dumps(described, indent=1), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr(
            "README.txt",
            "Training photos exported from carsite. Orientation says which way the car faces (left is canonical).\n"
            "Train on them elsewhere with:  python -m ml.train --data images --out runs/reproduced "
            "--config ml/configs/canonical.json\n",
        )
    return len(rows)
