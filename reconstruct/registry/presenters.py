"""How the registry's admin words a decision: what activating a version would change, in numbers and in words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reconstruct.models import ModelVersion

# PSNR differences within this (dB) are noise between two runs on a few photos: "about as good".
PSNR_TOLERANCE_DB = 0.05
# (key, label, unit, digits): the measures the confirmation compares, higher is better for both.
MEASURES = (("psnr", "PSNR", " dB", 2), ("ssim", "SSIM", "", 3))


@dataclass
class ActivationDifference:
    """A candidate against the active version: ``rows`` of (label, candidate, active, difference) as text,
    where the numbers come from (``basis``), a one-sentence ``verdict`` and whether the candidate is ``worse``."""

    verdict: str
    worse: bool
    basis: str = ""
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)


def _rows(mine: dict[str, Any], theirs: dict[str, Any], note: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for key, label, unit, digits in MEASURES:
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float):
            name = f"{label}{' (' + unit.strip() + ')' if unit else ''}{note}"
            rows.append((name, f"{a:.{digits}f}", f"{b:.{digits}f}", f"{a - b:+.{digits}f}"))
    return rows


def activation_difference(
    candidate: ModelVersion, active: ModelVersion | None, comparison: dict[str, Any] | None
) -> ActivationDifference:
    """Compare ``candidate`` with ``active`` for the activation's confirmation page.

    ``comparison`` is ``reconstruct/curation/services/compare.py: model_version_compare(a=candidate, b=active)``
    (mean scores of both on the same photos), or None when it could not run; then, or when it had no photos,
    the registry's metrics are used, each measured on its own version's validation photos.
    """
    if active is None:
        return ActivationDifference(
            verdict="No model is active now: this one will serve every reconstruction.", worse=False
        )
    if comparison and comparison.get("count"):
        means = comparison["means"]
        values = {v.pk: means.get(v.pk, {}) for v in (candidate, active)}
        basis = f"on the same {comparison['count']} photos: {comparison['source']}"
        where = f"on the {comparison['count']} compared photos"
    else:
        values = {v.pk: v.metrics or {} for v in (candidate, active)}
        basis = "each on its own validation photos (no photos to compare both on)"
        where = "on their own validation photos"
    rows = _rows(values[candidate.pk], values[active.pk], "")
    if comparison and comparison.get("count"):
        # The registry's figures too (what the list shows), each on its own version's validation photos.
        rows += _rows(candidate.metrics or {}, active.metrics or {}, ", registry (own validation photos)")
    mine, theirs = values[candidate.pk].get("psnr"), values[active.pk].get("psnr")
    if not isinstance(mine, int | float) or not isinstance(theirs, int | float):
        return ActivationDifference(
            verdict=f"There is no PSNR to compare {candidate.name} with the active {active.name}.",
            worse=False,
            basis=basis,
            rows=rows,
        )
    gap = mine - theirs
    scores = f"PSNR {mine:.2f} dB against {theirs:.2f} dB"
    if gap < -PSNR_TOLERANCE_DB:
        verdict = (
            f"{candidate.name} is worse than the active model {active.name} {where}: {scores} "
            f"({-gap:.2f} dB lower). Every reconstruction would come out further from its photo."
        )
    elif gap > PSNR_TOLERANCE_DB:
        verdict = (
            f"{candidate.name} is better than the active model {active.name} {where}: {scores} ({gap:.2f} dB higher)."
        )
    else:
        verdict = f"{candidate.name} is about as good as the active model {active.name} {where}: {scores}."
    return ActivationDifference(verdict=verdict, worse=gap < -PSNR_TOLERANCE_DB, basis=basis, rows=rows)
