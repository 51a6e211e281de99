"""Playing with the latent space: morphs, new cars from the prior, slider edits, sharing, the map.

Everything decodes with the active model inside the request (the decoder takes a few milliseconds),
so it works the same locally and on Lambda (sync mode). The math is in ``ml/latent.py``; the
principal components and the map's projection come from the model's metadata (``ml.export``).

A result's latent is its posterior mean under the model version that made it. Under another
(newer) active model that code means nothing, so uploads are encoded again from their stored
photo; sampled and edited results, which have no photo, are then unavailable (``LatentUnavailable``).
"""

from __future__ import annotations

import functools
import io
import json
import math
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from PIL import Image

from ml import framing, latent, runtime
from ml.preprocess import enlarge, to_image
from reconstruct.images import png_bytes
from reconstruct.models import ModelVersion, Reconstruction
from reconstruct.registry.services import model_version_load_active
from reconstruct.services.uploads import reconstruction_rate_consume
from reconstruct.storage import storage_delete_keys, storage_save_all

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

Status = Reconstruction.Status
Origin = Reconstruction.Origin

MORPH_STEPS = 8
MORPH_MAX_STEPS = 24
MORPH_FRAME_MS = 120  # per frame of the animation; it plays forwards then backwards
SAMPLE_COUNT = 8
SAMPLE_MAX_COUNT = 32
SAMPLE_MAX_INDEX = 10_000
MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 2.0
SLIDERS = 8  # principal directions on a result page
MAX_OFFSET = 4.0  # standard deviations along one direction
ANIMATION_FORMATS = {"webp": "image/webp", "gif": "image/gif"}
# 32 random bytes: the unguessable part of a public link.
SHARE_TOKEN_BYTES = 32
# Seconds one map request may spend encoding photos of results that have no usable latent yet.
MAP_ENCODE_BUDGET_S = 5.0


class LatentUnavailable(Exception):
    """This result has no code the active model understands; ``str(error)`` is meant for a person."""


@dataclass(frozen=True)
class LatentSpace:
    """The active model's principal directions (``latent_pca``) and map projection (``latent_map``) from
    its metadata; either may be None for a model exported before they existed."""

    version: ModelVersion
    model: runtime.Model
    pca: dict[str, Any] | None
    projection: dict[str, Any] | None

    def directions(self, count: int = SLIDERS) -> list[dict[str, float]]:
        """The first ``count`` directions: ``index`` (1-based), ``explained_variance_ratio`` (0..1), ``std``."""
        if not self.pca:
            return []
        ratios = self.pca["explained_variance_ratio"][:count]
        variances = self.pca["explained_variance"][:count]
        return [
            {"index": i + 1, "explained_variance_ratio": ratio, "std": math.sqrt(variance)}
            for i, (ratio, variance) in enumerate(zip(ratios, variances, strict=True))
        ]


def latent_space_active() -> LatentSpace:
    """The active model and its latent-space metadata.

    A database that registered the shipped model before its metadata carried the latent space keeps the
    older metadata.json in storage; the entries are then read from the checkout's copy, which describes the
    same ONNX files whenever the version names match (the name includes a hash of those files).
    """
    version, model = model_version_load_active()
    metadata = model.metadata
    if latent.PCA_KEY not in metadata and version.source == ModelVersion.Source.SHIPPED:
        metadata = _shipped_metadata(version.name) or metadata
    return LatentSpace(version, model, metadata.get(latent.PCA_KEY), metadata.get(latent.MAP_KEY))


@functools.lru_cache(maxsize=4)
def _shipped_metadata(version_name: str) -> dict[str, Any] | None:
    """ml/weights/default/metadata.json when it describes ``version_name``, else None."""
    try:
        metadata = json.loads((runtime.DEFAULT_MODEL_DIR / runtime.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    return metadata if metadata.get("version") == version_name else None


# Latents of uploads made by another model version, encoded again from their photo: kept per process
# (they cannot go into the row, whose latent belongs to its own model_version).
_reencoded: OrderedDict[tuple[str, uuid.UUID], np.ndarray] = OrderedDict()
_reencoded_lock = threading.Lock()
REENCODED_CACHE_SIZE = 4096  # 128 float32 each: 2 MB


def reconstruction_latent_needs_encoding(reconstruction: Reconstruction, space: LatentSpace) -> bool:
    """Whether ``reconstruction_latent`` would have to encode the stored photo (it has no usable latent)."""
    if reconstruction.latent is not None and reconstruction.model_version_id == space.version.pk:
        return False
    with _reencoded_lock:
        return (space.version.name, reconstruction.uuid) not in _reencoded


def reconstruction_latent_problem(reconstruction: Reconstruction, space: LatentSpace) -> str | None:
    """Why ``reconstruction_latent`` would fail, in words, without encoding anything; None if it works."""
    if reconstruction.status != Status.DONE:
        return "This reconstruction is not finished yet."
    if reconstruction.model_version_id == space.version.pk and reconstruction.latent is not None:
        return None
    if not reconstruction.original:
        return (
            f"“{reconstruction.original_name}” was decoded by an earlier model; the active model "
            f"({space.version.name}) cannot read its code."
        )
    return None


def reconstruction_latent(reconstruction: Reconstruction, space: LatentSpace) -> np.ndarray:
    """The result's posterior mean ``[latent_dim]`` under the active model (``space``).

    Kept from the run when the same model made it; otherwise the stored photo's frame, as that run's model
    saw it (cropped, and mirrored when the car faced right), is encoded again (and the
    latent kept in the row when it simply predates latents, in a per-process cache when another model
    made the row). Raises LatentUnavailable for an unfinished result, a sampled or edited one made by
    another model, or a photo that can no longer be read.
    """
    problem = reconstruction_latent_problem(reconstruction, space)
    if problem:
        raise LatentUnavailable(problem)
    same_model = reconstruction.model_version_id == space.version.pk
    if reconstruction.latent is not None and same_model:
        return np.asarray(reconstruction.latent, np.float32)
    key = (space.version.name, reconstruction.uuid)
    with _reencoded_lock:
        if key in _reencoded:
            _reencoded.move_to_end(key)
            return _reencoded[key]
    try:
        with default_storage.open(reconstruction.original.name, "rb") as handle:
            photo = runtime.open_source(io.BytesIO(handle.read()))
        # What the model saw when the result was made (its frame, faced left), not the whole photo.
        mu = space.model.encode(framing.model_view(photo, reconstruction.frame, bool(reconstruction.mirrored)))
    except (FileNotFoundError, runtime.ImageError) as error:
        raise LatentUnavailable(f"The photo of “{reconstruction.original_name}” can no longer be read.") from error
    if same_model:
        values = [float(v) for v in mu]
        Reconstruction.objects.filter(pk=reconstruction.pk, latent__isnull=True).update(latent=values)
        reconstruction.latent = values
    else:
        with _reencoded_lock:
            _reencoded[key] = mu
            while len(_reencoded) > REENCODED_CACHE_SIZE:
                _reencoded.popitem(last=False)
    return mu


def image_png(image: Image.Image) -> bytes:
    """A picture as PNG bytes (``reconstruct.images.png_bytes``: zlib level 1, run-length strategy): a slider move's
    frame in well under a millisecond of its time."""
    return png_bytes(image)


# --- Morph -------------------------------------------------------------------------------------------------


def morph_options(steps: object = None, method: object = None) -> tuple[int, str]:
    """``(steps, method)`` from user input (strings or None for the defaults: 8 steps, slerp).

    Raises ValidationError with a message for a person."""
    try:
        count = MORPH_STEPS if steps in (None, "") else int(str(steps))
    except ValueError:
        raise ValidationError("steps must be a whole number.", code="bad_steps") from None
    if not 2 <= count <= MORPH_MAX_STEPS:
        raise ValidationError(f"steps must be between 2 and {MORPH_MAX_STEPS}.", code="bad_steps")
    name = "slerp" if method in (None, "") else str(method)
    if name not in latent.METHODS:
        raise ValidationError(f"method must be one of {', '.join(latent.METHODS)}.", code="bad_method")
    return count, name


_morph_cache: OrderedDict[tuple[Any, ...], list[Image.Image]] = OrderedDict()
_morph_cache_lock = threading.Lock()
MORPH_CACHE_SIZE = 8  # a morph page fetches its strip and its animation at once: decode the frames once


def morph_frames(first: Reconstruction, second: Reconstruction, steps: int, method: str) -> list[Image.Image]:
    """``steps`` decoded frames (full model frames, RGB) walking from ``first``'s latent mean to ``second``'s
    by ``method`` (``ml.latent.interpolate``). Raises LatentUnavailable as ``reconstruction_latent``.

    The last few morphs are kept per process (a result's latent under one model version never changes)."""
    space = latent_space_active()
    key = (space.version.name, first.uuid, second.uuid, steps, method)  # never reused, unlike a pk
    with _morph_cache_lock:
        if key in _morph_cache:
            _morph_cache.move_to_end(key)
            return list(_morph_cache[key])
    path = latent.interpolate(reconstruction_latent(first, space), reconstruction_latent(second, space), steps, method)
    frames = [to_image(frame) for frame in space.model.decode_array(path)]
    with _morph_cache_lock:
        _morph_cache[key] = frames
        while len(_morph_cache) > MORPH_CACHE_SIZE:
            _morph_cache.popitem(last=False)
    return list(frames)


def morph_strip_png(frames: list[Image.Image]) -> bytes:
    """The frames side by side, left to right, as one PNG."""
    return image_png(_strip(frames))


def _strip(frames: list[Image.Image]) -> Image.Image:
    width, height = frames[0].size
    strip = Image.new("RGB", (width * len(frames), height))
    for i, frame in enumerate(frames):
        strip.paste(frame, (i * width, 0))
    return strip


def morph_animation(frames: list[Image.Image], fmt: str) -> bytes:
    """An endlessly looping animation (``fmt`` "webp" or "gif") that walks there and back, enlarged to 256
    pixels wide, MORPH_FRAME_MS per frame.

    WebP is lossy at quality 90 (the frames are smooth; measured on 14 frames: 27 KB in ~0.2 s against
    237 KB in ~1.6 s lossless); the GIF frames share one 256-colour palette made from all of them (fast
    octree), which avoids per-frame palettes flickering and costs a quarter of Pillow's default.
    """
    if fmt not in ANIMATION_FORMATS:
        raise ValueError(f"unknown animation format {fmt!r}")
    big = [enlarge(frame, 256) for frame in frames]
    loop = big + big[-2:0:-1]
    options: dict[str, Any]
    if fmt == "webp":
        options = {"quality": 90, "method": 2}
    else:
        palette = _strip(big).quantize(colors=256, method=Image.Quantize.FASTOCTREE)
        loop = [frame.quantize(palette=palette, dither=Image.Dither.NONE) for frame in loop]
        options = {}
    buffer = io.BytesIO()
    loop[0].save(buffer, fmt.upper(), save_all=True, append_images=loop[1:], duration=MORPH_FRAME_MS, loop=0, **options)
    return buffer.getvalue()


# --- New cars from the prior ---------------------------------------------------------------------------------


def sample_options(seed: object, temperature: object = None) -> tuple[int, float]:
    """``(seed, temperature)`` from user input; temperature defaults to 1 (the prior itself), in [0, 2].

    Raises ValidationError with a message for a person."""
    try:
        number = int(str(seed))
    except ValueError:
        raise ValidationError("seed must be a whole number.", code="bad_seed") from None
    if not 0 <= number <= MAX_SEED:
        raise ValidationError(f"seed must be between 0 and {MAX_SEED}.", code="bad_seed")
    try:
        scale = 1.0 if temperature in (None, "") else float(str(temperature))
    except ValueError:
        raise ValidationError("temperature must be a number.", code="bad_temperature") from None
    if not 0.0 <= scale <= MAX_TEMPERATURE:  # also refuses NaN
        raise ValidationError(f"temperature must be between 0 and {MAX_TEMPERATURE:g}.", code="bad_temperature")
    return number, round(scale, 3)


def sample_seed_new() -> int:
    """A fresh random seed for a new page of cars (small enough to read and type)."""
    return secrets.randbelow(10**9)


def sample_latents(seed: int, temperature: float, count: int, start: int = 0) -> tuple[LatentSpace, np.ndarray]:
    """The active model and latents ``[count, D]`` of samples ``start .. start + count - 1`` of ``seed``."""
    space = latent_space_active()
    return space, latent.prior_sample(seed, count, space.model.config.latent_dim, temperature, start=start)


def sample_image(seed: int, temperature: float, index: int) -> Image.Image:
    """Sample ``index`` of ``seed`` at ``temperature``, decoded by the active model (full frame)."""
    if not 0 <= index < SAMPLE_MAX_INDEX:
        raise ValidationError(f"index must be between 0 and {SAMPLE_MAX_INDEX - 1}.", code="bad_index")
    space, z = sample_latents(seed, temperature, 1, start=index)
    return space.model.decode(z[0])


def sample_keep(*, user: AbstractBaseUser, seed: int, temperature: float, index: int) -> Reconstruction:
    """Keep sample ``index`` of ``seed`` in the user's gallery as a sampled result (counts against the
    hourly limit like an upload; raises UploadRateLimited)."""
    if not 0 <= index < SAMPLE_MAX_INDEX:
        raise ValidationError(f"index must be between 0 and {SAMPLE_MAX_INDEX - 1}.", code="bad_index")
    space, z = sample_latents(seed, temperature, 1, start=index)
    return _reconstruction_from_latent(
        user=user,
        space=space,
        z=z[0],
        origin=Origin.SAMPLED,
        detail={"seed": seed, "temperature": temperature, "index": index},
        name=f"New car {seed}-{index}",
    )


# --- Sliders --------------------------------------------------------------------------------------------------


def slider_offsets(values: object, space: LatentSpace) -> np.ndarray:
    """Offsets ``[k]`` in standard deviations along the first k <= SLIDERS directions, from a list of numbers
    or a comma-separated string. Raises ValidationError (a message for a person) or LatentUnavailable
    (the model has no directions)."""
    if not space.pca:
        raise LatentUnavailable(
            f"The active model ({space.version.name}) was exported without principal directions; "
            "export it again to get the sliders."
        )
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()] if values.strip() else []
    if not isinstance(values, list | tuple):
        raise ValidationError("offsets must be a list of numbers.", code="bad_offsets")
    limit = min(SLIDERS, len(space.pca["components"]))
    if len(values) > limit:
        raise ValidationError(f"at most {limit} offsets, one per direction.", code="bad_offsets")
    try:
        offsets = np.array([float(v) for v in values], np.float64)
    except (TypeError, ValueError):
        raise ValidationError("offsets must be numbers.", code="bad_offsets") from None
    if not np.all(np.abs(offsets) <= MAX_OFFSET):  # also refuses NaN
        raise ValidationError(f"each offset must be between -{MAX_OFFSET:g} and {MAX_OFFSET:g}.", code="bad_offsets")
    return offsets


def reconstruction_edit_latent(reconstruction: Reconstruction, offsets: object) -> tuple[LatentSpace, np.ndarray]:
    """The result's latent moved by ``offsets`` standard deviations along the principal directions."""
    space = latent_space_active()
    steps = slider_offsets(offsets, space)
    z = reconstruction_latent(reconstruction, space)
    if len(steps) == 0:
        return space, z
    return space, latent.pca_move(z, space.pca, latent.pca_coordinates(z, space.pca, len(steps)) + steps)


def reconstruction_edit_image(reconstruction: Reconstruction, offsets: object) -> Image.Image:
    """The result decoded after a slider move: the model's whole frame (for a 2:1 photo the same pixels as
    the stored reconstruction; for others the decoder's picture of the letterbox bars too, so that every
    slider picture, the first included, comes from the same decoding), mirrored back when the car was
    mirrored to face left for the model, so the slider picture faces the way the result does. Raises
    ValidationError for bad offsets, LatentUnavailable."""
    space, z = reconstruction_edit_latent(reconstruction, offsets)
    picture = space.model.decode(z)
    return picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if reconstruction.mirrored else picture


def reconstruction_edit_save(
    *, user: AbstractBaseUser, reconstruction: Reconstruction, offsets: object
) -> Reconstruction:
    """Keep a slider result in the user's gallery (origin "edited"; counts against the hourly limit)."""
    space, z = reconstruction_edit_latent(reconstruction, offsets)
    steps = [round(float(v), 3) for v in slider_offsets(offsets, space)]
    stem = (reconstruction.original_name.rsplit(".", 1)[0] or "car")[:200]
    return _reconstruction_from_latent(
        user=user,
        space=space,
        z=z,
        origin=Origin.EDITED,
        detail={"source": str(reconstruction.uuid), "offsets": steps},
        name=f"{stem} (edited)",
        mirrored=reconstruction.mirrored,
    )


def latent_decode(latent_values: object) -> Image.Image:
    """Any latent (a list of latent_dim finite numbers) decoded by the active model (full frame).
    Raises ValidationError."""
    space = latent_space_active()
    dim = space.model.config.latent_dim
    if not isinstance(latent_values, list) or len(latent_values) != dim:
        raise ValidationError(f"latent must be a list of {dim} numbers.", code="bad_latent")
    try:
        z = np.array([float(v) for v in latent_values], np.float64)
    except (TypeError, ValueError):
        raise ValidationError(f"latent must be a list of {dim} numbers.", code="bad_latent") from None
    if not np.all(np.isfinite(z)) or np.abs(z).max(initial=0) > 1e3:
        raise ValidationError("latent values must be finite numbers between -1000 and 1000.", code="bad_latent")
    return space.model.decode(z)


def _reconstruction_from_latent(
    *,
    user: AbstractBaseUser,
    space: LatentSpace,
    z: np.ndarray,
    origin: str,
    detail: dict[str, Any],
    name: str,
    mirrored: bool = False,
) -> Reconstruction:
    """A finished result decoded from ``z``: reconstruction.png and a thumbnail written first, then the row.
    ``mirrored``: ``z`` is a left-facing (canonical) car shown mirrored, as the result it was edited from.
    Counts against the hourly limit like an upload (``reconstruction_rate_consume``; raises UploadRateLimited): it
    only checked before, so kept cars were never counted and one account could keep them without end."""
    counted = reconstruction_rate_consume(user)
    written: list[str] = []
    try:
        picture = space.model.decode(z)
        if mirrored:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        thumbnail = io.BytesIO()
        enlarge(picture, 480).save(thumbnail, "JPEG", quality=88)
        public_id = uuid.uuid4()
        prefix = f"reconstructions/{user.pk}/{public_id}"
        written += storage_save_all(
            [
                (f"{prefix}/reconstruction.png", ContentFile(image_png(picture))),
                (f"{prefix}/thumbnail.jpg", ContentFile(thumbnail.getvalue())),
            ]
        )
        now = timezone.now()
        return Reconstruction.objects.create(
            uuid=public_id,
            owner=user,
            status=Status.DONE,
            reconstruction=written[0],
            thumbnail=written[1],
            original_name=name,
            original_format="PNG",
            model_version=space.version,
            latent=[float(v) for v in np.asarray(z, np.float32)],
            origin=origin,
            origin_detail=detail,
            mirrored=mirrored,
            started_at=now,
            finished_at=now,
        )
    except BaseException:
        storage_delete_keys(written)
        if counted is not None:
            counted.delete()
        raise


# --- Sharing --------------------------------------------------------------------------------------------------


def reconstruction_share(reconstruction: Reconstruction) -> str:
    """Make a finished result public; returns the token of its link (the same one while it stays public).
    Raises ValidationError for an unfinished or failed result."""
    if reconstruction.status != Status.DONE:
        raise ValidationError("Only a finished reconstruction can be shared.", code="not_done")
    if reconstruction.share_token:
        return reconstruction.share_token
    with transaction.atomic():
        row = Reconstruction.objects.select_for_update().get(pk=reconstruction.pk)
        if not row.share_token:
            row.share_token = secrets.token_urlsafe(SHARE_TOKEN_BYTES)
            row.save(update_fields=["share_token"])
    reconstruction.share_token = row.share_token
    return row.share_token


def reconstruction_unshare(reconstruction: Reconstruction) -> None:
    """Make a result private again: its link answers 404 from now on (sharing again makes a new link)."""
    Reconstruction.objects.filter(pk=reconstruction.pk).update(share_token=None)
    reconstruction.share_token = None


# --- The map --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapPoint:
    """One result on the map: ``x``, ``y`` in [0, 1] (clipped; 0.5 is the training set's middle)."""

    reconstruction: Reconstruction
    x: float
    y: float


@dataclass(frozen=True)
class CarMap:
    points: list[MapPoint]
    left_out: list[str]  # why some results are not on it, one line each


def reconstruction_map(
    user: AbstractBaseUser, limit: int = 500, encode_budget_s: float = MAP_ENCODE_BUDGET_S
) -> CarMap:
    """The user's finished results (the newest ``limit``) placed by their latents with the active
    model's fixed projection. Raises LatentUnavailable when the model has none.

    Results without a usable latent are encoded from their photo until ``encode_budget_s`` seconds have
    gone into that (a request on Lambda has 29 s); the rest are left out with a note to reload, which
    places more each time (the encoded latents are kept)."""
    space = latent_space_active()
    if not space.projection:
        raise LatentUnavailable(
            f"The active model ({space.version.name}) was exported without a map projection; export it again."
        )
    results = (
        Reconstruction.objects.filter(owner=user, status=Status.DONE)
        .select_related("model_version")
        .order_by("-created_at", "-id")[:limit]
    )
    points, left_out = [], []
    encoding_s = 0.0
    postponed = 0
    for result in results:
        needs_encoding = reconstruction_latent_needs_encoding(result, space)
        if needs_encoding and encoding_s > encode_budget_s:
            postponed += 1
            continue
        started = time.monotonic()
        try:
            z = reconstruction_latent(result, space)
        except LatentUnavailable as problem:
            left_out.append(str(problem))
            continue
        finally:
            if needs_encoding:
                encoding_s += time.monotonic() - started
        x, y = latent.map_position(z, space.projection)
        points.append(MapPoint(result, min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)))
    if postponed:
        left_out.append(f"{postponed} older cars are still being placed: reload the page to see more of them.")
    return CarMap(points, left_out)
