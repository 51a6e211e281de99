"""What the load test and the profile run on: a folder of drawn car photos."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import draw_car, encode


@pytest.fixture
def drawn_cars(tmp_path: Path) -> Path:
    """A folder of three drawn cars (320x160 JPEG, red, blue, green)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, colour in enumerate([(200, 30, 30), (30, 60, 200), (40, 160, 60)]):
        (photos / f"car{index}.jpg").write_bytes(encode(draw_car((320, 160), colour), "JPEG", quality=90))
    return photos
