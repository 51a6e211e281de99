"""How a reconstruction is shown: URLs of its files, its JSON form, its scores in words; admin thumbnails."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from reconstruct.models import FILE_KINDS, ModelVersion, Reconstruction


def img_tag(url: str, height: int = 48, alt: str = "") -> str:
    """A lazily loaded ``<img>`` ``height`` px tall, for admin lists and pages (HTML-escaped)."""
    return format_html('<img src="{}" alt="{}" loading="lazy" style="height:{}px;border-radius:3px">', url, alt, height)


def file_url(reconstruction: Reconstruction, kind: str, download: bool = False) -> str | None:
    """The site URL of one stored file of a reconstruction (``kind`` one of FILE_KINDS), or None before it exists."""
    if not getattr(reconstruction, kind):
        return None
    url = reverse("reconstruct:file", args=[reconstruction.uuid, kind])
    return url + "?download=1" if download else url


def reconstruction_json(request: HttpRequest, reconstruction: Reconstruction) -> dict[str, object]:
    """A reconstruction as the JSON API returns it, with absolute URLs."""

    def absolute(url: str | None) -> str | None:
        return request.build_absolute_uri(url) if url else None

    return {
        "id": str(reconstruction.uuid),
        "status": reconstruction.status,
        "origin": reconstruction.origin,
        "error": reconstruction.error or None,
        "created_at": reconstruction.created_at.isoformat(),
        "finished_at": reconstruction.finished_at.isoformat() if reconstruction.finished_at else None,
        "original_name": reconstruction.original_name,
        "width": reconstruction.width,
        "height": reconstruction.height,
        "scores": reconstruction.scores(),
        "model_version": reconstruction.model_version.name if reconstruction.model_version else None,
        "images": {kind: absolute(file_url(reconstruction, kind)) for kind in FILE_KINDS},
        "url": absolute(reverse("reconstruct:detail", args=[reconstruction.uuid])),
        "status_url": absolute(reverse("api:reconstruction", args=[reconstruction.uuid])),
    }


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
    if typical_psnr is None:
        verdict = "Higher is better."
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
            "How much the photo's 128-number code differs from what the model expects before seeing anything: "
            "the information it had to store about this particular picture.",
        )
    )

    if reconstruction.car_likeness is not None:
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
