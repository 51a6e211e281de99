import io

import numpy as np
import pytest
from PIL import Image

from ml.config import ModelConfig
from ml.decode import ImageDecodeError
from ml.preprocess import enlarge, fit_box, open_image, prepare, to_image

CONFIG = ModelConfig()


def _png(image: Image.Image, **params) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    buffer.seek(0)
    return buffer


def _check(prepared, config: ModelConfig = CONFIG) -> None:
    assert prepared.array.shape == (config.channels, config.height, config.width)
    assert prepared.array.dtype == np.float32
    assert prepared.array.min() >= 0 and prepared.array.max() <= 1
    left, top, right, bottom = prepared.box
    assert 0 <= left < right <= config.width and 0 <= top < bottom <= config.height


def test_it_letterboxes_a_wide_car_photo_without_stretching_it() -> None:
    prepared = prepare(Image.new("RGB", (400, 100), (200, 10, 10)), CONFIG)
    _check(prepared)
    assert prepared.box == (0, 16, 128, 48)  # 4:1 fills the width; grey bars above and below
    assert prepared.array[:, 0, 0] == pytest.approx([CONFIG.pad_value] * 3)
    assert prepared.array[:, 30, 64] == pytest.approx([200 / 255, 10 / 255, 10 / 255], abs=1e-6)
    assert prepared.mask().sum() == 128 * 32


def test_it_fills_the_frame_for_a_2_to_1_photo() -> None:
    assert fit_box((256, 128), 64, 128) == (0, 0, 128, 64)


def test_it_handles_greyscale() -> None:
    prepared = prepare(Image.new("L", (200, 100), 90), CONFIG)
    _check(prepared)
    assert prepared.array[:, 32, 64] == pytest.approx([90 / 255] * 3)


def test_it_composites_transparency_on_white() -> None:
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (50, 25, 150, 75))
    prepared = prepare(_png(image), CONFIG)
    _check(prepared)
    assert prepared.array[:, 2, 2] == pytest.approx([1.0, 1.0, 1.0])
    assert prepared.array[:, 32, 64] == pytest.approx([0.0, 0.0, 1.0])


def test_it_handles_a_palette_image_with_a_transparent_index() -> None:
    image = Image.new("P", (120, 60), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (60, 0, 120, 60))
    prepared = prepare(_png(image, transparency=0), CONFIG)
    _check(prepared)
    assert prepared.array[:, 32, 10] == pytest.approx([1.0, 1.0, 1.0])  # transparent red -> white
    assert prepared.array[:, 32, 100] == pytest.approx([0.0, 1.0, 0.0])


def test_it_handles_16_bit_greyscale() -> None:
    image = Image.fromarray(np.linspace(0, 65535, 200 * 100, dtype=np.uint16).reshape(100, 200))
    _check(prepare(_png(image), CONFIG))


def test_it_handles_cmyk() -> None:
    buffer = io.BytesIO()
    Image.new("CMYK", (200, 100), (0, 255, 255, 0)).save(buffer, format="JPEG")
    _check(prepare(buffer, CONFIG))


def test_it_applies_the_exif_orientation() -> None:
    # Stored 100 wide x 200 tall; EXIF orientation 6 says "rotate 90 degrees clockwise to view",
    # so the upright photo is 200 wide x 100 tall and fills the 2:1 frame.
    stored = Image.new("RGB", (100, 200), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif.tobytes())
    buffer.seek(0)
    assert open_image(buffer).size == (200, 100)
    buffer.seek(0)
    assert prepare(buffer, CONFIG).box == (0, 0, 128, 64)


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (5000, 3), (3, 5000)])
def test_it_handles_tiny_and_extreme_aspect_ratios(size: tuple[int, int]) -> None:
    prepared = prepare(Image.new("RGB", size, (10, 20, 30)), CONFIG)
    _check(prepared)


def test_it_prepares_a_large_photo() -> None:
    prepared = prepare(Image.new("RGB", (6000, 3000), (1, 2, 3)), CONFIG)
    _check(prepared)
    assert prepared.box == (0, 0, 128, 64)


def test_it_refuses_data_that_is_not_an_image() -> None:
    with pytest.raises(ImageDecodeError, match="This file is text, not a photo") as caught:
        prepare(io.BytesIO(b"this is not a picture"), CONFIG)
    assert caught.value.code == "not_an_image"


def test_it_maps_model_output_back_to_the_photo_region() -> None:
    prepared = prepare(Image.new("RGB", (400, 100), (255, 0, 0)), CONFIG)
    picture = to_image(prepared.array, prepared.box)
    assert picture.size == (128, 32)
    assert picture.getpixel((64, 16)) == (255, 0, 0)
    assert enlarge(picture, 512).size == (512, 128)


def test_it_supports_a_one_channel_model() -> None:
    config = ModelConfig(channels=1)
    prepared = prepare(Image.new("RGB", (200, 100), (30, 60, 90)), config)
    _check(prepared, config)
    assert to_image(prepared.array).mode == "RGB"
