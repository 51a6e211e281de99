"""Example reconstructions for the home page, from cars drawn here with Pillow (no photos shipped).

The pictures are drawn once per process and reconstructed by the active model, so the home page
always shows what the current model does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

from ml import runtime


@dataclass(frozen=True)
class CarDrawing:
    """A side view of a car facing left, on a studio background."""

    title: str
    body: tuple[int, int, int]
    roof_start: float  # where the windscreen starts, as a fraction of the body length from the nose
    roof_end: float  # where the rear window ends
    roof_height: float  # cabin height relative to the body's height
    length: float = 0.86  # body length as a fraction of the picture width
    background: tuple[int, int, int] = (236, 238, 241)


EXAMPLES = (
    CarDrawing("A red saloon", body=(196, 32, 38), roof_start=0.30, roof_end=0.78, roof_height=0.85),
    CarDrawing("A blue hatchback", body=(36, 84, 170), roof_start=0.33, roof_end=0.95, roof_height=0.95, length=0.74),
    CarDrawing(
        "A silver estate",
        body=(176, 180, 186),
        roof_start=0.28,
        roof_end=0.97,
        roof_height=0.9,
        background=(214, 222, 230),
    ),
)


# The drawings' size in pixels (width, height): 2:1 like the model's input.
SIZE = (512, 256)


def draw_car(drawing: CarDrawing, width: int = SIZE[0], height: int = SIZE[1]) -> Image.Image:
    """Draw ``drawing`` as an RGB picture of ``width x height`` (drawn at 2x, then downsampled)."""
    scale = 2
    w, h = width * scale, height * scale
    image = Image.new("RGB", (w, h), drawing.background)
    draw = ImageDraw.Draw(image)
    # A floor a little darker than the wall, like a photo studio.
    floor_y = int(h * 0.78)
    floor = tuple(max(0, c - 28) for c in drawing.background)
    draw.rectangle((0, floor_y, w, h), fill=floor)

    body_w = int(w * drawing.length)
    left = (w - body_w) // 2
    right = left + body_w
    body_bottom = int(h * 0.74)
    body_top = int(h * 0.50)
    body_h = body_bottom - body_top
    wheel_r = int(body_h * 0.62)

    shadow = Image.new("L", (w, h), 0)
    ImageDraw.Draw(shadow).ellipse((left, floor_y - 14 * scale, right, floor_y + 18 * scale), fill=150)
    shadow = shadow.filter(ImageFilter.GaussianBlur(10 * scale))
    image.paste((40, 40, 44), mask=shadow)

    # Cabin: a trapezoid on the body, glass inside it.
    cabin_top = body_top - int(body_h * drawing.roof_height)
    x0 = left + int(body_w * drawing.roof_start)
    x3 = left + int(body_w * drawing.roof_end)
    slope = int(body_w * 0.09)
    dark = tuple(int(c * 0.8) for c in drawing.body)
    draw.polygon(
        [(x0, body_top + 2), (x0 + slope, cabin_top), (x3 - slope // 2, cabin_top), (x3, body_top + 2)], fill=dark
    )
    inset = int(body_h * 0.12)
    glass = (52, 64, 82)
    mid = (x0 + x3) // 2
    draw.polygon(
        [
            (x0 + inset * 2, body_top),
            (x0 + slope + inset, cabin_top + inset),
            (mid - inset // 2, cabin_top + inset),
            (mid - inset // 2, body_top),
        ],
        fill=glass,
    )
    draw.polygon(
        [
            (mid + inset // 2, body_top),
            (mid + inset // 2, cabin_top + inset),
            (x3 - slope // 2 - inset, cabin_top + inset),
            (x3 - inset * 2, body_top),
        ],
        fill=glass,
    )

    # Body with rounded ends, a lighter upper half for the light from above, and a waistline.
    draw.rounded_rectangle((left, body_top, right, body_bottom), radius=int(body_h * 0.45), fill=drawing.body)
    light = tuple(min(255, int(c * 1.18) + 12) for c in drawing.body)
    draw.rounded_rectangle(
        (left + 6 * scale, body_top + 4 * scale, right - 6 * scale, body_top + body_h // 2),
        radius=int(body_h * 0.3),
        fill=light,
    )
    draw.line(
        (left + body_w * 0.08, body_top + body_h * 0.55, right - body_w * 0.05, body_top + body_h * 0.55),
        fill=dark,
        width=2 * scale,
    )
    door = left + int(body_w * 0.5)
    draw.line((door, body_top + 4 * scale, door, body_bottom - 6 * scale), fill=dark, width=2 * scale)
    # Headlight at the nose (left), tail light at the back.
    draw.ellipse(
        (left + 6 * scale, body_top + body_h * 0.25, left + 26 * scale, body_top + body_h * 0.5), fill=(250, 244, 214)
    )
    draw.rectangle(
        (right - 12 * scale, body_top + body_h * 0.2, right - 3 * scale, body_top + body_h * 0.5), fill=(200, 20, 20)
    )

    for centre in (left + int(body_w * 0.2), right - int(body_w * 0.2)):
        cy = body_bottom
        draw.ellipse(
            (centre - wheel_r - 5 * scale, cy - wheel_r - 5 * scale, centre + wheel_r + 5 * scale, cy + wheel_r),
            fill=drawing.background,
        )
        draw.ellipse((centre - wheel_r, cy - wheel_r, centre + wheel_r, cy + wheel_r), fill=(28, 28, 30))
        rim = int(wheel_r * 0.55)
        draw.ellipse((centre - rim, cy - rim, centre + rim, cy + rim), fill=(170, 172, 178))
        hub = int(wheel_r * 0.18)
        draw.ellipse((centre - hub, cy - hub, centre + hub, cy + hub), fill=(90, 90, 96))
    return image.resize((width, height), Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class Example:
    drawing: CarDrawing
    picture: Image.Image
    result: runtime.Result


_lock = threading.Lock()
_cache: dict[tuple[str, str], list[Example]] = {}


def examples_for(model: runtime.Model) -> list[Example]:
    """The drawn examples reconstructed by ``model`` (computed once per model per process)."""
    key = (str(model.model_dir), model.version)
    with _lock:
        if key not in _cache:
            _cache.clear()
            pictures = [(drawing, draw_car(drawing)) for drawing in EXAMPLES]
            _cache[key] = [Example(d, p, model.reconstruct(p)) for d, p in pictures]
        return _cache[key]
