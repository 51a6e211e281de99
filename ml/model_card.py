"""A model directory's ``MODEL_CARD.md`` written from what its ``metadata.json`` records (no torch, no Django).

    python -m ml.model_card ml/weights/default [--recipe ml/configs/canonical.md]

Every number in the card comes from the export (``ml.export``: data, facings, training history, per-view
validation metrics, calibration) and the car check's refit (``ml.car_check``: ``car_check``); the recipe's
reasons are copied from the draft's "## Recipe" section (``ml/configs/canonical.md``). ``make
export-canonical`` writes it with every export, so the card never describes another model; what needs
judgement (limits, what a grid of reconstructions shows) is added as prose afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml import runtime

CARD_FILE = "MODEL_CARD.md"
RECIPE_DRAFT = Path("ml/configs/canonical.md")
VIEW_NAMES = {"": "all", "_side": "side views (facing left or right)", "_head_on": "head-on views (front or rear)"}


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def recipe_section(draft: Path) -> str | None:
    """The "## Recipe..." section of a draft card (up to the next "## " heading), or None."""
    if not draft.is_file():
        return None
    lines = draft.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## Recipe")), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start + 1 : end]).strip()


def _metrics_rows(metrics: dict[str, Any]) -> list[str]:
    rows = []
    groups = [(suffix, name) for suffix, name in VIEW_NAMES.items() if f"psnr{suffix}" in metrics]
    groups += [(f"@{folder}", f"from `{folder}/`") for folder in metrics.get("by_folder") or {}]
    for suffix, name in groups:
        if suffix.startswith("@"):
            values = metrics["by_folder"][suffix[1:]]
            get = values.get
        else:
            n_key = "n" if not suffix else f"n{suffix}"

            def get(key: str, suffix: str = suffix, n_key: str = n_key) -> Any:
                return metrics.get(n_key if key == "n" else f"{key}{suffix}")

        psnr, thumb = get("psnr"), get("baseline_thumb16_psnr")
        margin = "-" if psnr is None or thumb is None else f"{psnr - thumb:+.2f}"
        kl = get("kl")
        ssim = get("ssim")
        rows.append(
            f"| {name} | {get('n')} | **{_db(psnr)}** | {_db(thumb)} | {margin} | {_db(get('baseline_thumb8_psnr'))} | "
            f"{_db(get('baseline_mean_psnr'))} | {'-' if ssim is None else f'{ssim:.3f}'} | "
            f"{'-' if kl is None else f'{kl:,.0f}'} |"
        )
    return rows


def _history_rows(history: Sequence[dict[str, Any]], best_epoch: int | None) -> list[str]:
    rows = []
    for record in history:
        mark = " (best, exported)" if record.get("epoch") == best_epoch else ""
        rows.append(
            f"| {record['epoch']}{mark} | {_db(record.get('val_psnr'))} / {_db(record.get('val_psnr_side'))} / "
            f"{_db(record.get('val_psnr_head_on'))} | {record.get('val_kl', 0):,.0f} | {record.get('beta', 0):.2f} | "
            f"{record.get('lr', 0):g} | {record.get('seconds', 0):,.0f} |"
        )
    return rows


def _car_check_lines(check: dict[str, Any] | None) -> list[str]:
    if not check:
        return ["No car check was fitted for this model: the site uses the locator's own constants."]
    cross = check.get("cross_fitted") or {}
    alone = check.get("weights_alone_auroc") or {}
    return [
        "The page's car check is `sigmoid(a * locator logit + b * z + c) >= threshold` (`ml/framing.py:"
        " locator_check`), `z` this VAE's car-likeness z-score of the frame it saw. Refitted for this model by"
        " `python -m ml.car_check` (logistic regression, cars and non-cars weighted equally); the site uses these"
        " constants for this model (`metadata.json: car_check`) and the locator's copy"
        " (`ml/weights/locator/metadata.json: check`) for models without their own.",
        "",
        f"- constants: a = {check['a']}, b = {check['b']}, c = {check['c']}, threshold = {check['threshold']}",
        f"- fitted on: {check['fitted_on']}; none of them was seen in training by this VAE or by the locator",
        "",
        "| at the page's threshold | fitted on all | 2-fold cross-fitted |",
        "|---|---|---|",
        f"| cars told no car was found (false reject) | {_rate(check.get('false_reject_rate'))} "
        f"(crops {_rate(check.get('false_reject_rate_crops'))}, composites "
        f"{_rate(check.get('false_reject_rate_composites'))}) | {_rate(cross.get('false_reject_rate'))} |",
        f"| non-cars told they are a car (false accept) | {_rate(check.get('false_accept_rate'))} | "
        f"{_rate(cross.get('false_accept_rate'))} |",
        f"| AUROC cars vs non-cars | {check.get('auroc')} | {cross.get('auroc')} |",
        "",
        f"Each signal alone (AUROC): the locator's logit {alone.get('locator_logit')}, this VAE's frame z-score"
        f" {alone.get('frame_z')}. Median car check probability: cars {check.get('car_likeness_median_cars')},"
        f" non-cars {check.get('car_likeness_median_noncars')}. The composites (crops pasted into photos of other"
        " things) stand in for whole photos; real street and dealer photos are not measured here.",
    ]


def _quantization_lines(record: dict[str, Any] | None) -> list[str]:
    """The int8 step's outcome (``ml.quantize``: ``metadata["quantization"]``) as the card's section."""
    if not record:
        return []
    check = record.get("check") or {}
    head = (
        f"The fully connected layers ({', '.join(record.get('op_types') or [])}) run in int8 (dynamic"
        " quantisation, ``ml/quantize.py``); every convolution stays fp32."
        if record.get("applied")
        else f"fp32 throughout: the int8 step was refused ({record.get('reason', 'no reason recorded')})."
    )
    lines = ["", "## Quantisation", "", head]
    if check:
        lines += [
            "",
            f"Checked on {check.get('n')} held-out photos ({check.get('framing')}): PSNR {check.get('psnr_fp32')} dB"
            f" in fp32, {check.get('psnr_int8')} dB in int8 (mean drop {check.get('psnr_drop_db')} dB, worst photo"
            f" {check.get('psnr_drop_worst_db')} dB; the limit is {check.get('max_psnr_drop_db')} dB), SSIM drop"
            f" {check.get('ssim_drop')}, KL change {check.get('kl_change_nats')} nats (mean absolute"
            f" {check.get('kl_abs_change_nats')})"
            + (f", car-check answers changed: {check['car_found_changes']}" if "car_found_changes" in check else "")
            + ". The metrics above were measured in fp32.",
        ]
    return lines


def model_card_render(metadata: dict[str, Any], recipe: str | None = None) -> str:
    """The card's Markdown for a model's ``metadata.json`` (``recipe``: the reasons section to include)."""
    training = metadata.get("training") or {}
    config = training.get("config") or {}
    data = metadata.get("data") or {}
    metrics = metadata.get("metrics") or {}
    facings = data.get("facings") or {}
    folders = data.get("folders") or []
    lines = [
        f"# Model card: carsite default VAE (`{metadata['version']}`)",
        "",
        f"A convolutional variational autoencoder: a {config.get('model', {}).get('width')}x"
        f"{config.get('model', {}).get('height')} photo in, a {metadata['model']['latent_dim']}-number latent"
        f" (the posterior mean), the photo back; {metadata['parameters']:,} parameters, {metadata['gflop']} GFLOP"
        " per reconstruction. Written by `make export-canonical` (`ml/model_card.py`) from this directory's"
        f" `metadata.json`, exported {metadata['created']} from `{training.get('checkpoint')}`.",
        "",
        "## Reproduce",
        "",
        "```sh",
        "make train-canonical   # python -m ml.train --data "
        + " ".join(folders or ["DATA"])
        + " --out runs/canonical \\",
        "                       #     --config ml/configs/canonical.json --resume",
        "make export-canonical  # export, per-view metrics, the car check's refit and this card",
        "```",
        "",
        "## Data",
        "",
        f"- Folders: {', '.join(f'`{f}`' for f in folders) or '-'}: {_count(data.get('images'))} photos"
        f" ({data.get('skipped', 0)} unreadable), Stanford Cars *train* split (licence: research only, see"
        " `../shared/data/README.md`; no photo, nor any picture made from them, is in this repository).",
        f"- Split: the training run's seeded validation set, {data.get('val', len(data.get('val_names') or []))}"
        f" photos (names in `metadata.json`), {_count(data.get('train'))} for training.",
    ]
    if facings:
        counts = ", ".join(f"{count:,} {facing}" for facing, count in facings.get("counts", {}).items())
        lines.append(
            f"- **Facing left**: `{facings['file']}` (SHA-256 `{facings['sha256'][:16]}...`; {counts}): every photo"
            f" facing right is mirrored in training, validation, the metrics below, the mean image and the latent"
            f" map ({_count(data.get('mirrored'))} photos), as the site mirrors a right-facing frame."
        )
    lines += ["", "## Recipe", ""]
    lines += ["| setting | value |", "|---|---|"]
    for key, value in config.items():
        if key != "model":
            lines.append(f"| `{key}` | `{json.dumps(value)}` |")
    lines.append(f"| `model` | `{json.dumps(config.get('model'))}` |")
    if recipe:
        lines += ["", recipe]
    history = training.get("history") or []
    lines += [
        "",
        "## Training",
        "",
        f"{training.get('epochs_run')} epochs run (budget {config.get('epochs')}), best epoch"
        f" {training.get('best_epoch')} exported, {training.get('seconds', 0) / 3600:.2f} h of training on this"
        f" project's shared 2-core CPU ({config.get('threads')} torch threads).",
    ]
    if history:
        lines += [
            "",
            "| epoch | val PSNR, dB (all / side / head-on) | KL (nats) | beta | lr | seconds |",
            "|---|---|---|---|---|---|",
            *_history_rows(history, training.get("best_epoch")),
        ]
    lines += ["", "![loss curves](loss_curve.png)"] if "loss_curve.png" in (metadata.get("report_files") or []) else []
    lines += [
        "",
        "## Held-out metrics",
        "",
        f"On the {metrics.get('n', '-')} validation photos as training saw them (faced left), each whole photo"
        " letterboxed into the model's input, pixels inside the letterbox only (`python -m ml.evaluate --model"
        f" ml/weights/default --data {' '.join(folders)} --held-out --no-search"
        + (f" --facings {facings['file']}" if facings else "")
        + "`):",
        "",
        "| photos | n | VAE PSNR (dB) | 16x16 thumbnail | VAE - thumbnail | 8x8 thumbnail | mean image | SSIM | KL |",
        "|---|---|---|---|---|---|---|---|---|",
        *_metrics_rows(metrics),
    ]
    if "same_car_top1" in metrics:
        lines += [
            "",
            f"Recognisably the same car: {100 * metrics['same_car_top1']:.1f}% of reconstructions are nearer to their"
            f" own photo than to any other validation photo, {100 * metrics['orientation_agreement']:.1f}% face the"
            f" same way as their photo, average colour off by {metrics['colour_error']} levels of 255.",
        ]
    lines += ["", "## Car check", "", *_car_check_lines(metadata.get("car_check"))]
    calibration = metadata.get("calibration") or {}
    feature = (calibration.get("features") or {}).get("excess_error_db")
    if feature:
        lines += [
            "",
            f"The VAE's own car-likeness (`calibration`) is the z-score of how many dB its error exceeds a 16x16"
            f" thumbnail's, against these {calibration.get('n')} validation cars (faced left): mean"
            f" {feature['mean']:+.2f} dB, standard deviation {feature['std']:.2f} dB.",
        ]
    lines += _quantization_lines(metadata.get("quantization"))
    files = metadata.get("files") or {}
    lines += ["", "## Files", "", "| file | bytes | SHA-256 |", "|---|---|---|"]
    lines += [f"| `{name}` | {entry['bytes']:,} | `{entry['sha256'][:16]}...` |" for name, entry in files.items()]
    return "\n".join(lines) + "\n"


def model_card_write(model_dir: str | Path, recipe_draft: Path | None = RECIPE_DRAFT) -> Path:
    """Write ``MODEL_CARD.md`` into ``model_dir`` from its ``metadata.json``; returns its path."""
    model_dir = Path(model_dir)
    metadata = json.loads((model_dir / runtime.METADATA_FILE).read_text())
    metadata["report_files"] = [p.name for p in model_dir.iterdir() if p.suffix == ".png"]
    path = model_dir / CARD_FILE
    tmp = path.with_name(f".{CARD_FILE}.tmp")
    tmp.write_text(model_card_render(metadata, recipe_section(recipe_draft) if recipe_draft else None))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.model_card", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="exported model directory")
    parser.add_argument(
        "--recipe", type=Path, default=RECIPE_DRAFT, help="draft card whose '## Recipe' section to copy"
    )
    args = parser.parse_args(argv)
    print(model_card_write(args.model, args.recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
