"""Comparing two model versions on the same photos of the training set (the admin's compare page).

It lives with curation, not with the registry, because it needs the dataset's photos and the
validation split that a training run recorded.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from PIL import Image

from ml import runtime
from ml.decode import ImageDecodeError, image_decode
from reconstruct.curation.models import DatasetImage, TrainingRun
from reconstruct.curation.selectors import dataset_approved
from reconstruct.models import ModelVersion
from reconstruct.registry.services import model_version_local_dir


def _data_uri(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def comparison_images(*, a: ModelVersion, b: ModelVersion, sample: int) -> tuple[list[DatasetImage], str]:
    """The photos to compare two versions on, and where they come from.

    The validation split of the newer trained version (never seen in its training), else of the
    other one, else the first approved photos.
    """
    for version in sorted((a, b), key=lambda v: v.created_at, reverse=True):
        run = TrainingRun.objects.filter(model_version=version).first()
        if run is not None and run.val_image_ids:
            ids = run.val_image_ids[:sample]
            found = {i.pk: i for i in DatasetImage.objects.filter(pk__in=ids)}
            images = [found[i] for i in ids if i in found]
            if images:
                return images, f"validation photos of {version.name} (training run #{run.pk})"
    images = list(dataset_approved()[:sample])
    if images:
        return images, "the first approved photos (neither version records a validation split)"
    return list(DatasetImage.objects.filter(is_current=True).order_by("id")[:sample]), "the first photos in the dataset"


def model_version_compare(*, a: ModelVersion, b: ModelVersion, sample: int = 8) -> dict[str, Any]:
    """Run both versions on the same photos: pictures side by side and mean scores.

    Returns ``{"images": [...], "source": str, "means": {name: {metric: value}}, "rows": [...]}``
    where each row holds the photo and both reconstructions as data: URIs, with their scores.
    """
    from ml.preprocess import enlarge

    images, source = comparison_images(a=a, b=b, sample=sample)
    models = {v.pk: runtime.load_model(model_version_local_dir(v)) for v in (a, b)}
    rows = []
    totals: dict[int, dict[str, list[float]]] = {a.pk: {}, b.pk: {}}
    for image in images:
        with default_storage.open(image.file.name, "rb") as handle:
            data = handle.read()
        try:
            photo = image_decode(data, max_pixels=settings.RECONSTRUCT_MAX_IMAGE_PIXELS, reduce_to=(256, 256)).image
        except ImageDecodeError:
            continue  # checked on arrival; a file damaged in storage since has nothing to compare
        photo.thumbnail((256, 256), Image.Resampling.LANCZOS)
        row: dict[str, Any] = {"image": image, "input": _data_uri(photo), "results": []}
        for version in (a, b):
            try:
                result = models[version.pk].reconstruct(io.BytesIO(data))
            except ValueError as error:
                row["results"].append({"error": str(error)})
                continue
            scores = result.scores.to_dict()
            for key, value in scores.items():
                if value is not None:
                    totals[version.pk].setdefault(key, []).append(value)
            row["results"].append({"picture": _data_uri(enlarge(result.reconstruction, 256)), "scores": scores})
        rows.append(row)
    means = {
        version.pk: {key: float(np.mean(values)) for key, values in totals[version.pk].items()} for version in (a, b)
    }
    return {"rows": rows, "source": source, "means": means, "count": len(images)}
