"""How a reconstruction is shown: URLs of its files, its JSON form, its scores in words; admin thumbnails."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from django.core.cache import caches
from django.core.cache.utils import make_template_fragment_key
from django.http import Http404, HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from reconstruct.models import FILE_KINDS, ModelVersion, Reconstruction
from reconstruct.services.reconstructions import reconstruction_is_stuck
from reconstruct.storage import storage_serve
from reconstruct.templatetags.url_cache import reverse_remembered


def img_tag(url: str, height: int = 48, alt: str = "") -> str:
    """A lazily loaded ``<img>`` ``height`` px tall, for admin lists and pages (HTML-escaped)."""
    return format_html('<img src="{}" alt="{}" loading="lazy" style="height:{}px;border-radius:3px">', url, alt, height)


# A reconstruction's URLs differ only in its UUID: each is reversed once with this one in its place
# (``reverse_remembered``: per URL name, other arguments, script prefix and URLconf) and the UUID substituted after.
# Reversing costs about 30 µs of CPU, and an upload's answer names seven URLs (docs/performance.md, stop 29).
_PLACEHOLDER = uuid.UUID("00000000-0000-4000-8000-000000000000")


def reconstruction_url(name: str, public_id: uuid.UUID, *args: str) -> str:
    """``reverse(name, args=[public_id, *args])`` for a URL whose first argument is a reconstruction's UUID.

    Raises NoReverseMatch as ``reverse`` does. Anything but a ``uuid.UUID`` (a string) is reversed as given."""
    if not isinstance(public_id, uuid.UUID):
        return reverse(name, args=[public_id, *args])
    pattern = reverse_remembered(name, (_PLACEHOLDER, *args))
    if pattern.count(str(_PLACEHOLDER)) != 1:  # not a UUID as itself, once: reverse each time
        return reverse(name, args=[public_id, *args])
    return pattern.replace(str(_PLACEHOLDER), str(public_id))


def file_url(reconstruction: Reconstruction, kind: str, download: bool = False) -> str | None:
    """The site URL of one stored file of a reconstruction (``kind`` one of FILE_KINDS), or None before it exists."""
    if not getattr(reconstruction, kind):
        return None
    url = reconstruction_url("reconstruct:file", reconstruction.uuid, kind)
    return url + "?download=1" if download else url


def file_response(reconstruction: Reconstruction, kind: str, download: bool = False) -> HttpResponse:
    """One stored file of a reconstruction (``kind`` one of FILE_KINDS) as a response, saved by the browser as
    "<photo name>-<kind>.<ext>"; raises Http404 for an unknown kind or a file that does not exist (yet).
    Whoever calls it has checked that the caller may see it."""
    if kind not in FILE_KINDS:
        raise Http404("No such file.")
    field = getattr(reconstruction, kind)
    if not field:
        raise Http404("This file does not exist yet.")
    extension = field.name.rsplit(".", 1)[-1]
    stem = (reconstruction.original_name.rsplit(".", 1)[0] or "car")[:80]
    filename = f"{stem}-{kind.replace('_', '-')}.{extension}"
    return storage_serve(key=field.name, filename=filename, download=download, max_age=300)


def reconstruction_json(request: HttpRequest, reconstruction: Reconstruction) -> dict[str, object]:
    """A reconstruction as the JSON API returns it, with absolute URLs."""

    def absolute(url: str | None) -> str | None:
        return request.build_absolute_uri(url) if url else None

    stuck = reconstruction_is_stuck(reconstruction)
    can_retry = stuck or reconstruction.status == Reconstruction.Status.FAILED

    return {
        "id": str(reconstruction.uuid),
        "status": reconstruction.status,
        "origin": reconstruction.origin,
        "error": reconstruction.error or None,
        "created_at": reconstruction.created_at.isoformat(),
        "finished_at": reconstruction.finished_at.isoformat() if reconstruction.finished_at else None,
        # When its job was handed to the queue; null on a pending row: the queue did not answer (the sweep queues it).
        "queued_at": reconstruction.queued_at.isoformat() if reconstruction.queued_at else None,
        "original_name": reconstruction.original_name,
        "width": reconstruction.width,
        "height": reconstruction.height,
        "scores": reconstruction.scores(),
        **framing_json(reconstruction),
        "model_version": reconstruction.model_version.name if reconstruction.model_version else None,
        "images": {kind: absolute(file_url(reconstruction, kind)) for kind in FILE_KINDS},
        "url": absolute(reconstruction_url("reconstruct:detail", reconstruction.uuid)),
        "status_url": absolute(reconstruction_url("api:reconstruction", reconstruction.uuid)),
        # The page's "Try again" / "Queue it again": POST here when failed, or stuck (its job was lost).
        "stuck": stuck,
        "retry_url": absolute(reconstruction_url("api:retry", reconstruction.uuid)) if can_retry else None,
    }


def framing_json(reconstruction: Reconstruction) -> dict[str, object]:
    """Where the model looked, for the API: ``car_found`` (None before it ran, or for a result from
    before the car search), ``box`` and ``frame`` as ``[left, top, right, bottom]`` in pixels of the
    upright photo (right and bottom exclusive; ``box`` None when no car was found), ``facing`` ("left",
    "right", "front", "rear" or None) and ``mirrored`` (the frame was mirrored for the model, and the
    reconstruction mirrored back)."""
    done = reconstruction.status == Reconstruction.Status.DONE
    searched = done and reconstruction.frame is not None
    return {
        "car_found": (reconstruction.car_box is not None) if searched else None,
        "box": reconstruction.car_box if done else None,
        "frame": reconstruction.frame if done else None,
        "facing": (reconstruction.facing or None) if done else None,
        "mirrored": reconstruction.mirrored if done else None,
    }


def svg_rect(box: list[int] | None) -> dict[str, int] | None:
    """``[left, top, right, bottom]`` -> the x, y, width and height of an SVG ``<rect>`` (None stays None)."""
    if not box:
        return None
    left, top, right, bottom = box
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}


# Above this car-likeness a found car is told it looks like the training photos (ml/weights/locator/README.md:
# the median held-out car scores 0.96 or more, the median non-car 0.01; below 0.5 no car is found).
CLEARLY_A_CAR = 0.9


def car_check(reconstruction: Reconstruction) -> tuple[str, str] | None:
    """The car check in words, ``(headline, verdict)``, following the stored decision: a photo where the
    search found no car is told so and never that a car is recognisable; a found car is never told it
    may not be one. None before the search existed (older results) or without a car-likeness score."""
    if reconstruction.status != Reconstruction.Status.DONE or reconstruction.frame is None:
        return None
    if reconstruction.car_likeness is None:
        return None
    if reconstruction.car_box is None:
        return (
            "No car found",
            "We found no car in this photo, so the model saw the whole picture. It learned only from car "
            "photos, so expect a poor reconstruction.",
        )
    if reconstruction.car_likeness >= CLEARLY_A_CAR:
        return "A car", "We found a car and framed it: it looks like the car photos the model learned from."
    return (
        "A car",
        "We found what is most likely a car and framed it; the view or the photo is less usual for the model, so "
        "expect a rougher reconstruction.",
    )


@dataclass(frozen=True)
class ScoreExplanation:
    """One score for people: its name, its value with units, a verdict, and what it measures."""

    name: str
    value: str
    verdict: str
    meaning: str


def _typical(version: ModelVersion | None, key: str) -> float | None:
    if version is None:
        return None
    value = (version.metrics or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def explain_scores(reconstruction: Reconstruction) -> list[ScoreExplanation]:
    """The scores in plain words, compared with the model's average on car photos it never saw."""
    if reconstruction.status != Reconstruction.Status.DONE or reconstruction.psnr is None:
        return []  # unfinished, or decoded from a latent (sampled, edited): nothing to compare with
    version = reconstruction.model_version
    explanations = []

    psnr = reconstruction.psnr or 0.0
    typical_psnr = _typical(version, "psnr")
    no_car = reconstruction.frame is not None and reconstruction.car_box is None
    if typical_psnr is None:
        verdict = "Higher is better."
    elif no_car:
        # A plain wall or a blurred background reconstructs "well" too: the number says nothing about cars here.
        verdict = (
            f"The model averages {typical_psnr:.1f} dB on car photos; with no car in this photo the number is not "
            "comparable (smooth, plain pictures score high whatever they show)."
        )
    elif psnr >= typical_psnr + 1.5:
        verdict = f"Better than usual: the model averages {typical_psnr:.1f} dB on car photos it has not seen."
    elif psnr <= typical_psnr - 1.5:
        verdict = f"Worse than usual: the model averages {typical_psnr:.1f} dB on car photos it has not seen."
    else:
        verdict = f"About usual: the model averages {typical_psnr:.1f} dB on car photos it has not seen."
    explanations.append(
        ScoreExplanation(
            "Closeness (PSNR)",
            f"{psnr:.1f} dB",
            verdict,
            "How close the reconstruction is to what the model saw, pixel by pixel. Every 3 dB more halves "
            "the average error; around 20 dB the car is recognisable but blurred, above 30 dB hard to tell apart.",
        )
    )

    ssim = reconstruction.ssim or 0.0
    explanations.append(
        ScoreExplanation(
            "Structure (SSIM)",
            f"{ssim:.2f}",
            "1 means identical; " + ("the outlines survived well." if ssim >= 0.6 else "fine detail was lost."),
            "Whether edges, shapes and contrast are in the same places, which is closer to how people judge "
            "pictures than pixel error.",
        )
    )

    kl = reconstruction.kl or 0.0
    typical_kl = _typical(version, "kl")
    if not typical_kl:
        kl_verdict = "Unusual pictures tend to need more."
    elif kl > typical_kl * 1.3:
        kl_verdict = f"More than the {typical_kl:.0f} nats of a typical car photo: an unusual picture for the model."
    elif kl < typical_kl / 1.3:
        kl_verdict = f"Less than the {typical_kl:.0f} nats of a typical car photo: a simple picture for the model."
    else:
        kl_verdict = f"About the {typical_kl:.0f} nats of a typical car photo."
    explanations.append(
        ScoreExplanation(
            "Surprise (KL divergence)",
            f"{kl:.0f} nats",
            kl_verdict,
            "How much the photo's code (the numbers the model squeezes it into) differs from what the model "
            "expects before seeing anything: "
            "the information it had to store about this particular picture.",
        )
    )

    check = car_check(reconstruction)
    if check is not None and reconstruction.car_likeness is not None:
        likeness = reconstruction.car_likeness
        explanations.append(
            ScoreExplanation(
                "Car check",
                check[0],
                check[1],
                f"{'Under 1%' if likeness < 0.005 else f'{likeness:.0%}'} sure: how likely the photo shows a car, from "
                "the car finder's confidence and how well the model, which learned only from cars, reproduces what "
                "it framed. Under 50% counts as no car.",
            )
        )
    elif reconstruction.car_likeness is not None:
        likeness = reconstruction.car_likeness
        if likeness >= 0.25:
            words = "Looks like the cars the model learned from."
        elif likeness >= 0.05:
            words = "Somewhat unusual for a car photo."
        else:
            words = "Unlike the car photos the model learned from: maybe not a car, or an unusual view."
        explanations.append(
            ScoreExplanation(
                "Car-likeness",
                "under 1%" if likeness < 0.005 else f"{likeness:.0%}",
                words,
                "How ordinary this picture looks to the model compared with real car photos: about 50% for a "
                "typical car photo, near 0% for something the model has rarely seen.",
            )
        )
    return explanations


CARD_SECONDS = 60  # as templates/reconstruct/_card.html's {% cache %} tag


def cards_html(request: HttpRequest, reconstructions: Sequence[Reconstruction]) -> SafeString:
    """The gallery cards of ``reconstructions`` (templates/reconstruct/_card.html), as one piece of HTML.

    The whole grid is kept CARD_SECONDS under its owner and its cards' ids and states (the ``grids`` cache), so a
    page shown again is one cache read. When the grid changed (a new upload adds a card), the cards are fetched
    with one ``get_many`` from the ``cards`` cache, where the card template's own ``{% cache %}`` tag keeps them
    (the same keys: ``make_template_fragment_key``), and only the missing ones are rendered. Rendering 24 cached
    cards through the template, one cache tag each, was about half of the gallery page's CPU time (py-spy under
    ``make loadtest``). The two caches are separate (settings.CACHES) so that big grids never push cards out.
    A card's "… ago" is rewritten in the browser (static/js/timeago.js).
    """
    grids, cards = caches["grids"], caches["cards"]
    owner = request.user.pk
    states = "".join(f"{r.uuid}:{r.status};" for r in reconstructions)
    grid_key = f"gallery-grid:{owner}:{hashlib.sha256(states.encode()).hexdigest()[:32]}"
    grid = grids.get(grid_key)
    if grid is None:
        keys = [make_template_fragment_key("reconstruction-card", [r.uuid, r.status]) for r in reconstructions]
        found = cards.get_many(keys)
        grid = "".join(
            found[key] if key in found else render_to_string("reconstruct/_card.html", {"r": r}, request)
            for key, r in zip(keys, reconstructions, strict=True)
        )
        grids.set(grid_key, grid, CARD_SECONDS)
    return mark_safe(grid)
