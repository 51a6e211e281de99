"""Executing a training run inside the training worker (imports torch through ml.train; the web
processes never import this module).

The run's row is the only channel between the worker and the admin: the worker writes phase,
per-epoch progress, a heartbeat and the captured log into it; staff write ``cancel_requested``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import close_old_connections, connection, transaction
from django.db.models import F
from django.utils import timezone

from reconstruct.curation import selectors
from reconstruct.curation.models import TrainingRun
from reconstruct.models import ModelVersion
from reconstruct.registry.services import model_version_register
from reconstruct.storage import storage_delete_keys

logger = logging.getLogger(__name__)

Status = TrainingRun.Status
# Keep the end of a long log: the last lines say why a run failed.
LOG_LIMIT = 200_000


class RunMonitor:
    """The worker's side of the run row: heartbeat thread, cancel flag, log and progress writes."""

    def __init__(self, run_id: int, attempt: int) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self._log = io.StringIO()
        self._log_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"training-run-{run_id}-heartbeat", daemon=True)
        self._cancel_checked = 0.0
        self._cancelled = False

    def __enter__(self) -> RunMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()

    def _beat(self) -> None:
        try:
            while not self._stop.wait(selectors.TRAINING_HEARTBEAT_SECONDS):
                self.flush()
        finally:
            connection.close()  # this thread's own database connection

    def write(self, text: str) -> None:
        with self._log_lock:
            self._log.write(text)

    def flush(self) -> None:
        """Heartbeat, and append what was logged since the last flush (only while this attempt owns the row)."""
        with self._log_lock:
            text = self._log.getvalue()
            self._log = io.StringIO()
        _append_log(self.run_id, self.attempt, text, heartbeat=True)

    def phase(self, text: str) -> None:
        self.write(f"[{timezone.now():%H:%M:%S}] {text}\n")
        TrainingRun.objects.filter(pk=self.run_id).update(phase=text[:100])

    def should_stop(self) -> bool:
        """Read the cancel flag from the database, at most once a second (it is asked every batch)."""
        now = time.monotonic()
        if not self._cancelled and now - self._cancel_checked >= 1.0:
            self._cancel_checked = now
            self._cancelled = TrainingRun.objects.filter(pk=self.run_id, cancel_requested=True).exists()
        return self._cancelled


def _append_log(run_id: int, attempt: int, text: str, heartbeat: bool = False, **updates: Any) -> None:
    """Append to the run's log (keeping its last LOG_LIMIT characters) if ``attempt`` still owns the run."""
    with transaction.atomic():
        log = (
            TrainingRun.objects.select_for_update()
            .filter(pk=run_id, attempts=attempt)
            .values_list("log", flat=True)
            .first()
        )
        if log is None:
            return
        if heartbeat:
            updates["heartbeat_at"] = timezone.now()
        if text:
            updates["log"] = (log + text)[-LOG_LIMIT:]
        if updates:
            TrainingRun.objects.filter(pk=run_id).update(**updates)


class _Tee:
    """sys.stderr replacement: what ml.train prints goes to the worker's console and to the run's log."""

    def __init__(self, original: TextIO, monitor: RunMonitor) -> None:
        self._original = original
        self._monitor = monitor

    def write(self, text: str) -> int:
        self._monitor.write(text)
        return self._original.write(text)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _claim(run_id: int) -> tuple[TrainingRun, int] | None:
    """Take the run for this worker: ``(run, attempt)``, or None if there is nothing to do.

    A queued run is started. A running one whose heartbeat is fresh belongs to a live worker (this
    is a second delivery of its message: Redis redelivers a message not acknowledged within the
    visibility timeout, and training outlasts it), so we wait for it to beat or go silent; a silent
    one lost its worker and is resumed, up to selectors.TRAINING_MAX_ATTEMPTS.
    """
    waited = 0.0
    patience = selectors.TRAINING_STALE_SECONDS + 2 * selectors.TRAINING_HEARTBEAT_SECONDS
    while True:
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
            if run is None or run.is_finished:
                return None
            if run.status == Status.QUEUED and run.cancel_requested:
                run.status = Status.CANCELLED
                run.finished_at = timezone.now()
                run.save(update_fields=["status", "finished_at"])
                return None
            if run.status == Status.RUNNING and not selectors.training_run_is_stuck(run) and waited <= patience:
                heartbeat = run.heartbeat_at
            else:
                heartbeat = None
                if run.attempts >= selectors.TRAINING_MAX_ATTEMPTS:
                    run.status = Status.FAILED
                    run.error = (
                        f"The training worker stopped {run.attempts} times during this run (killed, restarted or out "
                        "of memory), so it was given up. Check the worker's console, then start a new run."
                    )
                    run.finished_at = timezone.now()
                    run.save(update_fields=["status", "error", "finished_at"])
                    return None
                resumed = run.status == Status.RUNNING
                run.status = Status.RUNNING
                run.attempts = F("attempts") + 1
                run.started_at = run.started_at or timezone.now()
                run.heartbeat_at = timezone.now()
                note = "resuming after its worker stopped" if resumed else "started"
                run.log = (run.log + f"[{timezone.now():%H:%M:%S}] {note}\n")[-LOG_LIMIT:]
                run.save(update_fields=["status", "attempts", "started_at", "heartbeat_at", "log"])
                run.refresh_from_db()
                return run, run.attempts
        # Another worker holds the run: leave it if it beats again; take over once it has been silent.
        time.sleep(selectors.TRAINING_HEARTBEAT_SECONDS)
        waited += selectors.TRAINING_HEARTBEAT_SECONDS
        if TrainingRun.objects.filter(pk=run_id).exclude(heartbeat_at=heartbeat).exists():
            return None  # it beat: alive, and this duplicate delivery has nothing to do


def _copy_images(run: TrainingRun, folder: Path, monitor: RunMonitor) -> dict[str, int]:
    """Copy the snapshot's photos from storage to ``folder`` as <image id>.<ext>, checking each hash.

    Returns {file name: DatasetImage id}. Files already there with the right hash (a resumed run)
    are not copied again.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names: dict[str, int] = {}
    items = list(run.snapshot.items.order_by("image_id").values_list("image_id", "file_key", "content_hash"))
    for count, (image_id, key, expected) in enumerate(items, 1):
        name = f"{image_id}.{key.rsplit('.', 1)[-1]}"
        target = folder / name
        if not (target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == expected):
            digest = hashlib.sha256()
            with default_storage.open(key, "rb") as source, target.open("wb") as out:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected:
                raise RuntimeError(f"photo #{image_id} in storage ({key}) no longer matches the snapshot's hash")
        names[name] = image_id
        if count % 500 == 0:
            monitor.phase(f"copying photos from storage ({count} of {len(items)})")
    return names


def _facings_for_snapshot(run: TrainingRun, names: dict[str, int], folder: Path, out: Path) -> Path:
    """Write ml.train's facings CSV (``file,facing``) for the snapshot's photos, copied into ``folder`` as
    ``names`` ({file name: DatasetImage id}), to ``out``; returns ``out``.

    A photo's facing is the curators' orientation where they set one (left, right); for "unknown", what the facing
    classifier the site uses says (``ml.orientation``, on the whole photo: training photos are car crops), and
    "front" (mirrored at random, as a recipe without facings does) where it is not installed. A recipe with
    ``facings`` (``ml/configs/canonical.json``, the shipped model's) names a CSV of the shared dataset's files, none
    of which a snapshot has: such a run failed with "no facing for N photos".

    Written once per run: a resumed attempt keeps the file its checkpoints were trained with (``ml.train`` refuses
    to resume with other facings, and new classifier weights since could answer otherwise). Written to a temporary
    name, then renamed, so an interrupted write leaves no half file.
    """
    if out.is_file():
        return out
    from ml import orientation

    curated = dict(run.snapshot.items.values_list("image_id", "orientation"))
    known = {name: curated.get(image_id) for name, image_id in names.items()}
    unknown = sorted(name for name, facing in known.items() if facing not in ("left", "right"))
    predicted: dict[str, str] = {}
    if unknown:
        try:
            classifier = orientation.FacingClassifier(threads=1)
        except FileNotFoundError:
            logger.warning(
                "run %s: no facing classifier; %d photos of unknown facing mirror at random", run.pk, len(unknown)
            )
        else:
            found = orientation.predict_files(classifier, [folder / name for name in unknown])
            predicted = {name: facing.label for name, facing in found.items()}
    partial = out.with_name(out.name + ".partial")
    with partial.open("w", newline="") as handle:
        handle.write("file,facing\n")
        for name in sorted(names):
            facing = known[name] if known[name] in ("left", "right") else predicted.get(name, "front")
            handle.write(f"{name},{facing}\n")
    partial.replace(out)
    return out


class _Progress:
    """ml.train's per-epoch callback: writes the epoch record and a fresh validation picture."""

    def __init__(self, run: TrainingRun, config: Any, files: list[Path], out: Path) -> None:
        self.run = run
        self.config = config
        self.files = files
        self.out = out
        self._last_picture = 0.0
        self._images = None

    def __call__(self, record: dict[str, Any]) -> None:
        entry = {k: v for k, v in record.items() if isinstance(v, int | float)}
        picture_key = self._picture(final=record["epoch"] >= record.get("epochs", 0))
        updates: dict[str, Any] = {
            "epoch": record["epoch"],
            "eta_seconds": record.get("eta_seconds"),
            "best_epoch": record.get("best_epoch"),
        }
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update().get(pk=self.run.pk)
            # A resumed run replays no epochs, so records simply continue; keep one per epoch anyway.
            history = [h for h in run.history if h.get("epoch") != entry["epoch"]] + [entry]
            updates["history"] = history
            old_picture = run.val_reconstructions.name
            if picture_key:
                updates["val_reconstructions"] = picture_key
            TrainingRun.objects.filter(pk=run.pk).update(**updates, phase=f"training: epoch {record['epoch']} done")
        if picture_key and old_picture:
            transaction.on_commit(lambda: storage_delete_keys([old_picture]))

    def _picture(self, final: bool) -> str:
        """Validation photos (top) and their reconstructions by the latest weights (bottom), at most every 10 s."""
        now = time.monotonic()
        if not final and now - self._last_picture < 10:
            return ""
        self._last_picture = now
        try:
            from ml.data import load_images, split_indices
            from ml.train import grid_from_model, load_checkpoint

            if self._images is None:
                # The same cache file ml.train wrote: no photo is decoded twice.
                self._images = load_images(self.files, self.config.model, cache_dir=self.out / "cache")
            _, val_index = split_indices(len(self._images), self.config.val_fraction, self.config.seed)
            model, _ = load_checkpoint(self.out / "last.pt")
            grid = grid_from_model(model, self._images, val_index[:8])
            buffer = io.BytesIO()
            grid.save(buffer, "PNG")
            return default_storage.save(f"training/{self.run.pk}/val-epoch.png", ContentFile(buffer.getvalue()))
        except Exception:  # a missing picture must never stop the training
            logger.exception("could not draw validation reconstructions for run %s", self.run.pk)
            return ""


def _store_report(run: TrainingRun, path: Path) -> str:
    if not path.is_file():
        return ""
    with path.open("rb") as handle:
        return default_storage.save(f"training/{run.pk}/{path.name}", File(handle, name=path.name))


def _register(
    run: TrainingRun, model_dir: Path, metrics: dict[str, Any], train_dir: Path, monitor: RunMonitor
) -> ModelVersion:
    """Register the exported model and finish the run, all or nothing.

    The registry's model_version_register copies the files into storage under models/<version>/ and
    only then creates the row (deleting the files if that fails); the row, the run's link to it and
    the run's "succeeded" are one transaction, so a crash anywhere leaves either a registered
    version with a finished run or neither (and no files). A run cancelled meanwhile (``cancel_requested``)
    is not finished as succeeded: ``ml.train.Cancelled`` is raised and nothing stays registered. The log is
    flushed first and the line naming the version is written in that transaction, so a run never reads
    "succeeded" with its log cut short.
    """
    monitor.flush()  # the log so far is kept whatever happens next, and is complete when the run reads "succeeded"
    reports = [key for key in (_store_report(run, train_dir / "loss_curve.png"),) if key]
    version: ModelVersion | None = None
    try:
        with transaction.atomic():
            version = model_version_register(
                model_dir=model_dir,
                source=ModelVersion.Source.TRAINED,
                created_by=run.created_by,
                metrics=metrics,
                notes=(
                    f"Trained in the admin: run #{run.pk}, config {run.config_name}, on snapshot #{run.snapshot_id} "
                    f"({run.snapshot.image_count} photos)."
                ),
            )
            _append_log(
                run.pk, monitor.attempt, f"[{timezone.now():%H:%M:%S}] registered model version {version.name}\n"
            )
            updated = TrainingRun.objects.filter(pk=run.pk, status=Status.RUNNING, cancel_requested=False).update(
                status=Status.SUCCEEDED,
                model_version=version,
                loss_curve=reports[0] if reports else "",
                phase="",
                finished_at=timezone.now(),
            )
            if not updated:
                if TrainingRun.objects.filter(pk=run.pk, status=Status.RUNNING, cancel_requested=True).exists():
                    from ml.train import Cancelled  # torch: only the training worker gets here

                    raise Cancelled("while its model was being registered; nothing was registered")
                raise RuntimeError("the run was changed by someone else while it was being registered")
    except BaseException:
        if version is not None:
            storage_delete_keys(entry["key"] for entry in version.files.values())
        storage_delete_keys(reports)
        raise
    return version


def _stop_if_cancelled(monitor: RunMonitor, when: str) -> None:
    """Raise ``ml.train.Cancelled`` when staff cancelled the run: between training's end and the registration
    (exporting, evaluating), a cancel used to be accepted and then ignored, and its model registered anyway."""
    if monitor.should_stop():
        from ml.train import Cancelled  # torch: only the training worker gets here

        raise Cancelled(when)


def _fail(run_id: int, attempt: int, error: str, log: str = "") -> None:
    _append_log(run_id, attempt, log, status=Status.FAILED, error=error, phase="", finished_at=timezone.now())


def training_run_execute(run_id: int) -> TrainingRun | None:
    """Run a queued training run to the end (the ``training`` Celery task; needs torch).

    Copies the snapshot's photos from storage, trains with ml.train (progress and cancellation
    through the row), exports and evaluates the best checkpoint, and registers a model version
    (``_register``: reconstruct.registry.services.model_version_register). Idempotent: a finished
    run is left alone, and a run whose worker died is resumed from its last checkpoint.
    """
    claimed = _claim(run_id)
    if claimed is None:
        return TrainingRun.objects.filter(pk=run_id).first()
    run, attempt = claimed

    from ml.config import TrainConfig
    from ml.evaluate import evaluate
    from ml.export import export_checkpoint
    from ml.train import Cancelled, train

    work = Path(settings.CURATION_TRAINING_DIR) / f"run-{run.pk}"
    images_dir, train_dir, model_dir = work / "images", work / "train", work / "model"
    monitor = RunMonitor(run.pk, attempt)
    original_stderr = sys.stderr
    try:
        with monitor:
            sys.stderr = _Tee(original_stderr, monitor)
            try:
                config = TrainConfig.from_dict(run.config)
                monitor.phase(f"copying {run.snapshot.image_count} photos from storage")
                names = _copy_images(run, images_dir, monitor)
                files = sorted(images_dir / name for name in names)
                if config.facings:  # every photo faced left for the model (issue 10): this snapshot's facings
                    facings = _facings_for_snapshot(run, names, images_dir, work / "facings.csv")
                    config = config.replace(facings=str(facings))
                monitor.phase(f"training: {config.epochs} epochs of config {run.config_name} on {len(files)} photos")
                result = train(
                    config,
                    files,
                    train_dir,
                    resume=attempt > 1,
                    progress=_Progress(run, config, files, train_dir),
                    should_stop=monitor.should_stop,
                    show_bar=False,
                )
                import torch

                checkpoint = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
                val_names = list(checkpoint.get("val_names", []))
                del checkpoint
                TrainingRun.objects.filter(pk=run.pk).update(val_image_ids=[names[n] for n in val_names if n in names])
                _stop_if_cancelled(monitor, "after training, before the export")
                monitor.phase("exporting the best checkpoint to ONNX")
                export_checkpoint(result.best_checkpoint, model_dir, data_dir=images_dir, name=f"run{run.pk}")
                monitor.phase(f"evaluating on {len(val_names)} validation photos")
                metrics = evaluate(model_dir, [images_dir / n for n in val_names])
                metrics.update(
                    split="validation",
                    snapshot=run.snapshot_id,
                    training_run=run.pk,
                    epochs_run=result.epochs_run,
                    best_epoch=result.best_epoch,
                    seconds=round(result.seconds, 1),
                )
                _stop_if_cancelled(monitor, "after the export, before registering its model")
                monitor.phase("registering the model version")
                _register(run, model_dir, metrics, train_dir, monitor)
            finally:
                sys.stderr = original_stderr
    except Cancelled as stop:
        TrainingRun.objects.filter(pk=run.pk, attempts=attempt).update(
            status=Status.CANCELLED, error=f"Cancelled by staff ({stop}).", phase="", finished_at=timezone.now()
        )
    except SoftTimeLimitExceeded:
        limit = settings.CURATION_TRAINING_TIME_LIMIT
        _fail(run.pk, attempt, f"The run took longer than the {limit / 3600:g} h limit (CURATION_TRAINING_TIME_LIMIT).")
    except Exception as error:
        logger.exception("training run %s failed", run.pk)
        _fail(run.pk, attempt, f"{type(error).__name__}: {error}", log="\n" + traceback.format_exc())
    finally:
        close_old_connections()
        if not TrainingRun.objects.filter(pk=run.pk, status=Status.RUNNING).exists():
            shutil.rmtree(work, ignore_errors=True)
    return TrainingRun.objects.filter(pk=run.pk).first()
