"""Finding the car and framing it (ml/framing.py): geometry, the no-car path, mirroring, on the tiny model."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from ml import framing, runtime
from tests.support import draw_car


def test_it_searches_the_whole_picture_first_and_stays_inside_it() -> None:
    boxes = framing.candidate_boxes(400, 300)
    assert boxes[0] == framing.Box(0, 0, 400, 300)
    assert len(boxes) == len(set(boxes)) > 20
    for box in boxes:
        assert 0 <= box.left < box.right <= 400 and 0 <= box.top < box.bottom <= 300
        assert min(box.width, box.height) >= framing.MIN_SIDE
    # Wide windows for side views and squarer ones for front views are both tried.
    ratios = {round(b.width / b.height, 1) for b in boxes}
    assert min(ratios) <= 1.5 and max(ratios) >= 2.5


def test_it_frames_the_box_with_a_margin_clipped_to_the_photo() -> None:
    box = framing.Box(100, 50, 300, 150)
    assert framing.frame_for(box, (640, 480), margin=0.1) == framing.Box(80, 40, 320, 160)
    assert framing.frame_for(box, (640, 480), margin=0.0) == box
    # Near the photo's edge the frame stops at the edge.
    assert framing.frame_for(framing.Box(0, 10, 200, 110), (250, 120), margin=0.25) == framing.Box(0, 0, 250, 120)
    # No car: the whole photo.
    assert framing.frame_for(None, (640, 480)) == framing.Box(0, 0, 640, 480)


def test_it_scales_boxes_and_measures_overlap() -> None:
    box = framing.Box(10, 20, 50, 40)
    assert box.scaled(2.0, (1000, 1000)) == framing.Box(20, 40, 100, 80)
    assert box.scaled(2.0, (90, 60)) == framing.Box(20, 40, 90, 60)
    assert box.iou(box) == 1.0
    assert box.iou(framing.Box(50, 20, 90, 40)) == 0.0
    assert framing.Box(0, 0, 10, 10).iou(framing.Box(5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert box.as_list() == [10, 20, 50, 40]


def _scene() -> Image.Image:
    scene = Image.new("RGB", (160, 120), (60, 110, 60))
    scene.paste(draw_car((80, 40)), (50, 60))
    return scene


def test_it_finds_the_most_car_like_box_and_says_when_none_is_car_like_enough(tiny_export: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    location = framing.car_locate(model, _scene(), found_z=-np.inf)
    assert location.box == location.best and location.candidates > 20
    scores = framing.box_scores(model, _scene(), [location.best, framing.Box(0, 0, 160, 120)])
    assert scores[0] == pytest.approx(location.z, abs=1e-6) and scores[0] >= scores[1]
    nothing = framing.car_locate(model, _scene(), found_z=np.inf)
    assert nothing.box is None and nothing.best == location.best


def test_it_gives_a_photo_without_a_car_the_whole_picture(tiny_export: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    framed = framing.photo_reconstruct(model, _scene(), facing=lambda image: "right", found_z=np.inf, method="vae")
    assert framed.car_found is False and framed.box is None
    assert framed.frame == framing.Box(0, 0, 160, 120) and framed.size == (160, 120)
    # The car check keeps the search's best score, as a probability like runtime.car_likeness.
    assert framed.car_likeness == pytest.approx(0.5 * math.erfc(-framed.car_z / math.sqrt(2)))
    # No car, so no direction is decided and nothing is mirrored.
    assert framed.facing is None and not framed.mirrored
    assert framed.result.model_input.size == model.reconstruct(_scene()).model_input.size


def test_it_mirrors_a_right_facing_car_for_the_model_and_the_reconstruction_back(tiny_export: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    scene = _scene()
    framed = framing.photo_reconstruct(model, scene, facing=lambda image: "right", method="vae", found_z=-np.inf)
    assert framed.car_found and framed.facing == "right" and framed.mirrored
    crop = scene.crop(tuple(framed.frame.as_list()))
    direct = model.reconstruct(ImageOps.mirror(crop))
    # What the model saw is the mirrored frame; the reconstruction comes back facing the photo's way.
    assert np.array_equal(np.asarray(framed.result.model_input), np.asarray(direct.model_input))
    assert np.array_equal(np.asarray(framed.result.reconstruction), np.asarray(ImageOps.mirror(direct.reconstruction)))
    assert framed.result.scores == direct.scores
    left = framing.photo_reconstruct(model, scene, facing=lambda image: "left", method="vae", found_z=-np.inf)
    assert left.facing == "left" and not left.mirrored and left.frame == framed.frame


def test_it_frames_the_whole_photo_without_the_search(tiny_export: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    framed = framing.photo_reconstruct(model, _scene(), locate=False, facing=False)
    assert framed.box is None and framed.car_found is None and framed.car_likeness is None
    assert framed.frame == framing.Box(0, 0, 160, 120)
    assert framed.result.scores == model.reconstruct(_scene()).scores


def test_it_refuses_undecodable_bytes(tiny_export: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    with pytest.raises(runtime.ImageError):
        framing.photo_reconstruct(model, b"not an image")


@pytest.fixture(scope="module")
def untrained_locator(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An untrained locator exported like the real one: its box and logit are arbitrary but deterministic."""
    import torch

    from ml import train_locator

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("locator")
    train_locator.export_dir(train_locator.Locator().eval(), out, {"steps": 0})
    return out


def _locator(directory: Any, c: float) -> framing.CarLocator:
    """The locator in ``directory`` with the car check's bias set to ``c`` (large: always a car; small: never)."""
    locator = framing.CarLocator(directory)
    locator.metadata["check"] = {"a": 1.0, "b": 0.0, "c": c, "threshold": 0.5}
    return locator


def test_it_maps_the_locators_box_back_into_the_photo(untrained_locator: Any) -> None:
    locator = framing.CarLocator(untrained_locator)
    for size in ((320, 120), (90, 200)):
        logit, box = locator.locate(Image.new("RGB", size, (90, 90, 90)))
        assert np.isfinite(logit)
        assert 0 <= box.left < box.right <= size[0] and 0 <= box.top < box.bottom <= size[1]
    # The letterbox the locator sees: the photo centred on grey, scale and offset to map boxes back.
    array, scale, offset = framing.letterbox_square(Image.new("RGB", (200, 100), (255, 0, 0)), 96)
    assert array.shape == (3, 96, 96) and scale == pytest.approx(0.48) and offset == (0, 24)
    assert array[:, 0, 0] == pytest.approx([128 / 255] * 3) and array[:, 48, 48] == pytest.approx([1, 0, 0])


def test_it_frames_what_the_locator_found_when_the_check_says_car(tiny_export: Any, untrained_locator: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    locator = _locator(untrained_locator, 100.0)
    logit, box = locator.locate(_scene())
    framed = framing.photo_reconstruct(model, _scene(), facing=lambda image: "right", locator=locator)
    assert framed.car_found and framed.box == box and framed.car_z == pytest.approx(logit)
    assert framed.frame == framing.frame_for(box, (160, 120), locator.metadata["margin"])
    assert framed.mirrored and framed.car_likeness == pytest.approx(1.0)


def test_it_gives_the_whole_photo_when_the_locator_check_says_no_car(tiny_export: Any, untrained_locator: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    framed = framing.photo_reconstruct(
        model, _scene(), facing=lambda image: "right", locator=_locator(untrained_locator, -100.0)
    )
    assert framed.car_found is False and framed.box is None and framed.frame == framing.Box(0, 0, 160, 120)
    assert not framed.mirrored and framed.facing is None and framed.car_likeness == pytest.approx(0.0)
    assert framed.result.scores == model.reconstruct(_scene()).scores


def test_it_weighs_the_locator_and_the_vae_in_the_car_check() -> None:
    check = {"a": 2.0, "b": 0.5, "c": -1.0, "threshold": 0.5}
    assert framing.locator_check(1.0, 2.0, check) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert framing.locator_check(1.0, None, check) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert framing.locator_check(-800.0, 0.0, check) == pytest.approx(0.0)


class _FixedLocator:
    """A locator that always finds a car at ``fraction = (left, top, right, bottom)`` of the picture it is given
    (fractions of its width and height), and remembers the sizes of the pictures it saw."""

    def __init__(self, fraction: tuple[float, float, float, float]) -> None:
        self.fraction = fraction
        self.seen: list[tuple[int, int]] = []
        self.metadata = {"margin": 0.0, "check": {"a": 1.0, "b": 0.0, "c": 0.0, "threshold": 0.5}}
        self.sha256 = "fixed"

    def locate(self, image: Image.Image) -> tuple[float, framing.Box]:
        self.seen.append(image.size)
        left, top, right, bottom = self.fraction
        w, h = image.size
        return 10.0, framing.Box(round(left * w), round(top * h), round(right * w), round(bottom * h))


def _large_jpeg(size: tuple[int, int] = (2400, 1200)) -> bytes:
    import io

    scene = Image.new("RGB", size, (60, 110, 60))
    scene.paste(draw_car((size[0] * 3 // 4, size[1] * 3 // 4)), (size[0] // 8, size[1] // 8))
    buffer = io.BytesIO()
    scene.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def _framed_whole(model: runtime.Model, data: bytes, locator: _FixedLocator) -> framing.Framed:
    """What framing the full-size decode gives (photo_reconstruct before large photos were decoded reduced)."""
    options = {"locate": True, "facing": None, "found_z": None, "method": "locator", "locator": locator}
    return framing._frame_and_reconstruct(model, runtime.open_source(data), **options)


def test_a_large_photo_is_framed_on_a_reduced_decode_in_full_size_pixels(tiny_export: Any) -> None:
    # A 2400x1200 JPEG whose car fills most of it: found and cut from a decode at half size (never decoded whole),
    # with the box, frame and size given in the full photo's pixels, and what the model gets barely differs.
    model = runtime.load_model(tiny_export.model_dir)
    data = _large_jpeg()
    locator = _FixedLocator((0.125, 0.125, 0.875, 0.875))
    framed = framing.photo_reconstruct(model, data, facing=None, locator=locator)
    assert locator.seen == [(1200, 600)]
    assert framed.size == (2400, 1200)
    assert framed.box == framed.frame == framing.Box(300, 150, 2100, 1050)
    whole = _framed_whole(model, data, _FixedLocator((0.125, 0.125, 0.875, 0.875)))
    assert whole.frame == framed.frame
    assert framed.result.scores.psnr == pytest.approx(whole.result.scores.psnr, abs=0.2)


def test_a_small_car_in_a_large_photo_is_framed_on_a_decode_large_enough_for_it(tiny_export: Any) -> None:
    # A frame with fewer than REDUCING_GAP times the model's input across in the first, reduced decode: the photo is
    # decoded again, reduced only as far as that frame allows, and framed there.
    model = runtime.load_model(tiny_export.model_dir)
    width, height = model.config.width, model.config.height
    # 2400x1200, a car 4 inputs across: 2 in the half-size decode, so the photo is decoded whole, and framed exactly
    # as the full-size decode frames it.
    data = _large_jpeg()
    small = (0.4, 0.4, 0.4 + 4 * width / 2400, 0.4 + 4 * height / 1200)
    locator = _FixedLocator(small)
    framed = framing.photo_reconstruct(model, data, facing=None, locator=locator)
    assert locator.seen == [(1200, 600), (2400, 1200)]
    whole = _framed_whole(model, data, _FixedLocator(small))
    assert (framed.box, framed.frame, framed.size) == (whole.box, whole.frame, (2400, 1200))
    assert framed.result.scores == whole.result.scores
    # 4800x2400, a car 7 inputs across: under 2 in the quarter-size first decode, 3.5 at half size, where it is framed.
    data = _large_jpeg((4800, 2400))
    locator = _FixedLocator((0.4, 0.4, 0.4 + 7 * width / 4800, 0.4 + 7 * height / 2400))
    framed = framing.photo_reconstruct(model, data, facing=None, locator=locator)
    assert locator.seen == [(1200, 600), (2400, 1200)]
    assert framed.size == (4800, 2400) and framed.box == framed.frame
    assert framed.frame.width == pytest.approx(7 * width, abs=2)
    assert framed.frame.height == pytest.approx(7 * height, abs=2)


def test_a_large_photo_decoded_by_the_caller_at_the_working_size_is_not_decoded_again(
    monkeypatch: pytest.MonkeyPatch, tiny_export: Any
) -> None:
    # The site's upload decodes a photo for its thumbnail at the size framing's first decode keeps (960 pixels):
    # handed over, it gives the same result without a decode of its own; a decode of another size is not used.
    from ml.decode import image_decode

    model = runtime.load_model(tiny_export.model_dir)
    data = _large_jpeg((4032, 3024))
    fraction = (0.125, 0.125, 0.875, 0.875)
    own = framing.photo_reconstruct(model, data, facing=None, locator=_FixedLocator(fraction))
    decodes: list[Any] = []
    monkeypatch.setattr(framing, "image_decode", lambda *a, **k: decodes.append(k) or image_decode(*a, **k))
    thumbnail_decode = image_decode(data, reduce_to=(480, 480), reducing_gap=2.0)
    handed = framing.photo_reconstruct(
        model, data, facing=None, locator=_FixedLocator(fraction), decoded=thumbnail_decode
    )
    assert decodes == []
    assert (handed.box, handed.frame, handed.size) == (own.box, own.frame, own.size)
    assert handed.result.scores == own.result.scores
    assert np.array_equal(np.asarray(handed.result.reconstruction), np.asarray(own.result.reconstruction))
    other = framing.photo_reconstruct(
        model, data, facing=None, locator=_FixedLocator(fraction), decoded=image_decode(data, reduce_to=(100, 100))
    )
    assert len(decodes) == 1 and other.result.scores == own.result.scores
    # Nor is a decode of a photo over the pixels framing's own decode accepts: refused as it would be without it.
    monkeypatch.setattr(framing, "MAX_PIXELS", 4032 * 3024 - 1)
    with pytest.raises(runtime.ImageError) as refused:
        framing.photo_reconstruct(model, data, facing=None, locator=_FixedLocator(fraction), decoded=thumbnail_decode)
    assert refused.value.code == "too_many_pixels"


def test_a_lazily_opened_large_pillow_image_keeps_its_size_and_full_size_pixels(tiny_export: Any) -> None:
    # A caller's own Image.open(...) is decoded whole, as before: a reduced decode would shrink that very object
    # (Pillow's draft) and give the box and frame in the shrunk picture's pixels.
    import io

    model = runtime.load_model(tiny_export.model_dir)
    image = Image.open(io.BytesIO(_large_jpeg()))
    locator = _FixedLocator((0.4, 0.4, 0.45, 0.45))
    framed = framing.photo_reconstruct(model, image, facing=None, locator=locator)
    assert image.size == (2400, 1200) and locator.seen == [(2400, 1200)]
    assert framed.size == (2400, 1200) and framed.box == framing.Box(960, 480, 1080, 540)


def test_a_frame_found_on_a_reduced_decode_is_scaled_back_along_each_axis() -> None:
    # 1001x7000 decodes at half size to 501x3500 (each side rounded up): x and y scale by different ratios, and a
    # frame reaching the reduced picture's edges reaches the full photo's.
    found = framing.Framed(
        result=None,  # type: ignore[arg-type]
        box=framing.Box(250, 1750, 501, 3500),
        frame=framing.Box(0, 0, 501, 3500),
        size=(501, 3500),
        facing=None,
        mirrored=False,
        car_z=None,
        car_found=True,
        car_likeness=None,
    )
    full = framing._in_full_size(found, (1001, 7000))
    assert full.size == (1001, 7000) and full.frame == framing.Box(0, 0, 1001, 7000)
    assert full.box == framing.Box(round(250 * 1001 / 501), 3500, 1001, 7000)
