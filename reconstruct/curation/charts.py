"""The loss curves of a training run as inline SVG, drawn from the run's per-epoch history.

Server-side so the admin needs no chart library and the same markup serves the page and its
progress endpoint. Only numbers from the history reach the markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

WIDTH, HEIGHT = 360, 200
MARGIN = {"left": 52, "right": 10, "top": 24, "bottom": 30}
SERIES = (("train", "#79aec8", "4 3"), ("val", "#c0392b", ""))


def _ticks(low: float, high: float, log: bool) -> list[float]:
    if log:
        return [10.0**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)]
    if high == low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / 3))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= 5:
            step *= factor
            break
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 1)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.0e}"
    return f"{value:g}"


def _panel(title: str, epochs: Sequence[int], lines: dict[str, Sequence[float]], log: bool) -> str:
    values = [
        v for series in lines.values() for v in series if v is not None and math.isfinite(v) and (v > 0 or not log)
    ]
    if not values or not epochs:
        return ""
    low, high = min(values), max(values)
    if log:
        low, high = 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high))
    elif high == low:
        low, high = low - 1, high + 1
    else:
        pad = (high - low) * 0.05
        low, high = low - pad, high + pad
    first, last = min(epochs), max(epochs)
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]

    def x(epoch: float) -> float:
        return MARGIN["left"] + (plot_w * (epoch - first) / (last - first) if last > first else plot_w / 2)

    def y(value: float) -> float:
        if log:
            fraction = (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low))
        else:
            fraction = (value - low) / (high - low)
        return MARGIN["top"] + plot_h * (1 - fraction)

    left, top, right = MARGIN["left"], MARGIN["top"], WIDTH - MARGIN["right"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{title}" font-family="sans-serif" font-size="10">',
        f'<text x="{MARGIN["left"]}" y="14" font-size="12" font-weight="bold">{title}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
    ]
    for tick in _ticks(low, high, log):
        if low <= tick <= high:
            ty = y(tick)
            parts.append(f'<line x1="{left}" x2="{right}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{MARGIN["left"] - 4}" y="{ty + 3:.1f}" text-anchor="end">{_label(tick)}</text>')
    for epoch in sorted({first, last, *epochs[:: max(1, len(epochs) // 5)]}):
        parts.append(
            f'<text x="{x(epoch):.1f}" y="{HEIGHT - MARGIN["bottom"] + 12}" text-anchor="middle">{epoch}</text>'
        )
    parts.append(f'<text x="{MARGIN["left"] + plot_w / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle">epoch</text>')
    legend_x = WIDTH - MARGIN["right"] - 110
    for i, (name, colour, dash) in enumerate(SERIES):
        series = lines.get(name) or []
        points = [
            (x(e), y(v))
            for e, v in zip(epochs, series, strict=False)
            if v is not None and math.isfinite(v) and (v > 0 or not log)
        ]
        if not points:
            continue
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr}/>')
        for px, py in points if len(points) < 40 else []:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2" fill="{colour}"/>')
        ly = 12 + i * 11
        label = "validation" if name == "val" else name
        parts.append(
            f'<line x1="{legend_x + 50}" x2="{legend_x + 70}" y1="{ly - 3}" y2="{ly - 3}" stroke="{colour}" '
            f'stroke-width="2"{dash_attr}/><text x="{legend_x + 74}" y="{ly}">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def loss_chart_svg(history: Sequence[dict[str, Any]]) -> str:
    """Two panels: reconstruction MSE per pixel (log scale) and KL per image, train and validation."""
    rows = [h for h in history if isinstance(h.get("epoch"), int | float)]
    if not rows:
        return ""
    epochs = [int(h["epoch"]) for h in rows]
    mse = _panel(
        "Reconstruction MSE per pixel",
        epochs,
        {"train": [h.get("train_mse") for h in rows], "val": [h.get("val_mse") for h in rows]},
        log=True,
    )
    kl = _panel(
        "KL divergence per image (nats)",
        epochs,
        {"train": [h.get("train_kl") for h in rows], "val": [h.get("val_kl") for h in rows]},
        log=False,
    )
    return mse + kl
