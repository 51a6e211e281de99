"""How curation is shown in the admin: a training run's live progress, durations, config labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.urls import reverse
from django.utils.safestring import mark_safe
from django.utils.timezone import localtime

from reconstruct.curation import charts, selectors
from reconstruct.curation.models import TrainingRun
from reconstruct.curation.selectors import training_run_is_stuck
from reconstruct.curation.services.training import training_config_load
from reconstruct.registry.selectors import model_version_active


def training_config_label(name: str) -> str:
    """``quick: 64x32 input, latent 32, 20 epochs``: a config as the start form lists it."""
    config = training_config_load(name=name)
    model = config["model"]
    size = f"{model['width']}\N{MULTIPLICATION SIGN}{model['height']}"
    return f"{name}: {size} input, latent {model['latent_dim']}, {config['epochs']} epochs"


def duration_text(seconds: float | None) -> str:
    """``seconds`` for people: "42 s", "12 min 05 s", "2 h 03 min"; "" for None."""
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def training_run_status_text(run: TrainingRun, stuck: bool) -> str:
    """The status line the run's page keeps up to date: "Running · attempt 1, started 2026-11-30 11:40:12"."""
    text = run.get_status_display() + (" (no heartbeat from its worker: stuck?)" if stuck else "")
    if run.started_at is not None:
        started = localtime(run.started_at).strftime("%Y-%m-%d %H:%M:%S")
        text += f" · attempt {run.attempts}, started {started}"
    return text


def training_run_outcome(run: TrainingRun) -> str:
    """How a finished run ended, in one sentence ("" while it runs): all epochs, stopped early and why, cancelled."""
    if not run.is_finished:
        return ""
    at = f"epoch {run.epoch} of {run.epochs}"
    if run.status == TrainingRun.Status.CANCELLED:
        return f"Cancelled at {at}."
    if run.status == TrainingRun.Status.FAILED:
        return f"Failed at {at}."
    best = f"the weights of its best epoch ({run.best_epoch})" if run.best_epoch else "its best weights"
    if run.epoch >= run.epochs:
        ran = "Ran its one epoch" if run.epochs == 1 else f"Ran all {run.epochs} epochs"
        return f"{ran}; {best} became the model."
    # ml.train stops when the validation loss has not improved for `patience` epochs at the final learning rate
    # (it lowers the rate once first, when it can).
    patience = (run.config or {}).get("patience")
    waited = f"for {patience} epochs in a row" if patience else "for several epochs"
    return (
        f"Stopped early at {at} because the validation loss had not improved {waited}, even at the lowest "
        f"learning rate; {best} became the model."
    )


def training_run_progress(run: TrainingRun) -> dict[str, Any]:
    """Everything the run's page shows; also the JSON its script polls."""
    latest = selectors.training_run_latest_record(run)
    stuck = training_run_is_stuck(run)
    version = None
    if run.model_version_id:
        version = {
            "name": run.model_version.name,
            "url": reverse("admin:reconstruct_modelversion_change", args=[run.model_version_id]),
            "compare_url": reverse("admin:reconstruct_modelversion_compare")
            + f"?a={run.model_version_id}&b={getattr(model_version_active(), 'pk', '')}",
            "is_active": run.model_version.is_active,
        }
    picture = ""
    if run.val_reconstructions:
        # The key changes with each new picture, so the browser fetches it again.
        picture = reverse("admin:curation_trainingrun_file", args=[run.pk, "val_reconstructions"]) + (
            f"?v={Path(run.val_reconstructions.name).stem}"
        )
    return {
        "status": run.status,
        "status_display": training_run_status_text(run, stuck),
        "outcome": training_run_outcome(run),
        "finished": run.is_finished,
        "stuck": stuck,
        "cancel_requested": run.cancel_requested,
        "phase": run.phase,
        "epoch": run.epoch,
        "epochs": run.epochs,
        "percent": round(100 * run.epoch / run.epochs) if run.epochs else 0,
        "eta": duration_text(run.eta_seconds) if not run.is_finished else "",
        "elapsed": duration_text(latest.get("seconds")),
        "best_epoch": run.best_epoch,
        "latest": {
            key: latest.get(key) for key in ("train_mse", "train_kl", "val_mse", "val_psnr", "val_kl", "val_loss", "lr")
        },
        "history_length": len(run.history),
        "chart_svg": mark_safe(charts.loss_chart_svg(run.history)),
        "picture_url": picture,
        "log_tail": run.log[-6000:],
        "error": run.error,
        "version": version,
    }
