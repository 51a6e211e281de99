"""The model registry: every exported VAE the site knows, which one is active, and the loaded model.

A version's files live in the default storage under models/<name>/ (ModelVersion.files records
their keys, sizes and SHA-256); ModelActivation is the audit trail of activations. Web processes
and workers find the active version with one small query per reconstruction and keep its ONNX
sessions loaded, so an activation in the admin reaches every process without a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from ml import runtime
from reconstruct.compiled import CompiledQuery
from reconstruct.models import ModelActivation, ModelVersion
from reconstruct.storage import storage_delete_keys

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

MODEL_REQUIRED_FILES = (runtime.ENCODER_FILE, runtime.DECODER_FILE, runtime.METADATA_FILE)
_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ModelVersionNameTaken(ValueError):
    """Raised by model_version_register when a version of that name is already registered."""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files_problem(model_dir: Path, expected: dict[str, str]) -> str | None:
    """What is wrong with the files of ``model_dir`` against ``expected`` ({file name: SHA-256 hex}), or None."""
    for name, sha256 in sorted(expected.items()):
        path = model_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256_file(path) != sha256:
            return f"{name} does not match its recorded SHA-256 (truncated or altered)"
    return None


def model_version_register(
    *,
    model_dir: str | Path,
    source: str,
    created_by: AbstractBaseUser | None = None,
    name: str | None = None,
    metrics: dict | None = None,
    notes: str = "",
) -> ModelVersion:
    """Copy an exported model directory into storage (models/<name>/...) and add it to the registry.

    This is where a training run's model becomes a version (reconstruct/curation/runner.py calls it).
    Each file's SHA-256 is checked against the one the export recorded in metadata.json, and the model is
    loaded once, so a broken or altered export never gets registered; every file's SHA-256 is recorded in
    ModelVersion.files. The version is not activated (see model_version_activate). ``name`` defaults to
    metadata.json's ``version``. Raises ValueError for a folder that is not a loadable export, a file that
    does not match its recorded SHA-256 or a bad name, and ModelVersionNameTaken (a ValueError) for a name
    taken, also when another thread or process registers it while the files are being copied.
    """
    model_dir = Path(model_dir)
    missing = [f for f in MODEL_REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ValueError(f"{model_dir} is not an exported model: missing {', '.join(missing)}")
    metadata = json.loads((model_dir / runtime.METADATA_FILE).read_text())
    # The export recorded each ONNX file's SHA-256 (ml/export.py): altered weights never get registered.
    recorded = {
        n: e["sha256"] for n, e in (metadata.get("files") or {}).items() if isinstance(e, dict) and "sha256" in e
    }
    if problem := _model_files_problem(model_dir, recorded):
        raise ValueError(f"{model_dir} is not the model its {runtime.METADATA_FILE} describes: {problem}")
    runtime.load_model(model_dir)  # raises if the ONNX files or the metadata are unusable
    name = name or str(metadata.get("version", ""))
    if not _VERSION_NAME.match(name):
        raise ValueError(f"invalid model version name {name!r}: use letters, digits, '.', '_' and '-'")
    if ModelVersion.objects.filter(name=name).exists():
        raise ModelVersionNameTaken(f"model version {name!r} is already registered")

    files: dict[str, dict] = {}
    try:
        for path in sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            with path.open("rb") as handle:
                key = default_storage.save(f"models/{name}/{path.name}", File(handle, name=path.name))
            files[path.name] = {"key": key, "size": path.stat().st_size, "sha256": _sha256_file(path)}
        try:
            with transaction.atomic():
                return ModelVersion.objects.create(
                    name=name,
                    source=source,
                    files=files,
                    metadata=metadata,
                    metrics=metrics if metrics is not None else metadata.get("metrics", {}),
                    notes=notes,
                    created_by=created_by,
                )
        except IntegrityError as error:
            if ModelVersion.objects.filter(name=name).exists():
                raise ModelVersionNameTaken(f"model version {name!r} is already registered") from error
            raise
    except BaseException:
        # Also when another process or thread registered the same name first.
        storage_delete_keys([entry["key"] for entry in files.values()])
        raise


def model_version_register_shipped() -> ModelVersion:
    """The version of the model shipped in ml/weights/default, registered on first use (idempotent).

    Safe when several threads or processes ask at once (a page's images are requested in parallel): the
    ones that lose the race return the winner's row. Raises FileNotFoundError (with what to do) when the
    shipped files are missing from the checkout.
    """
    metadata_path = runtime.DEFAULT_MODEL_DIR / runtime.METADATA_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(
            f"The shipped model is missing ({metadata_path}). Restore it with `git checkout ml/weights/default` "
            "or build it with `make train`."
        )
    name = str(json.loads(metadata_path.read_text())["version"])
    version = ModelVersion.objects.filter(name=name).first()
    if version is None:
        try:
            version = model_version_register(
                model_dir=runtime.DEFAULT_MODEL_DIR,
                source=ModelVersion.Source.SHIPPED,
                notes="The default model shipped in ml/weights/default.",
            )
        except ModelVersionNameTaken:
            version = ModelVersion.objects.get(name=name)  # another thread or process registered it first
    return version


def model_version_ensure_active() -> ModelVersion:
    """The active version; on a fresh database this registers and activates the shipped one first.

    Safe when several processes start at once: the partial unique constraint lets one activation win.
    """
    version = ModelVersion.objects.filter(is_active=True).first()
    if version is not None:
        return version
    shipped = model_version_register_shipped()
    try:
        model_version_activate(version=shipped, user=None, note="The shipped default model, activated on first start.")
    except IntegrityError:
        pass  # another process activated one at the same moment
    return ModelVersion.objects.get(is_active=True)


def model_version_activate(*, version: ModelVersion, user: AbstractBaseUser | None, note: str = "") -> ModelActivation:
    """Make ``version`` the one model every process uses; records who did it in ModelActivation.

    Every web and worker process notices on its next reconstruction (model_version_load_active).
    Activating the active version again returns its latest activation and records nothing.
    """
    with transaction.atomic():
        previous = ModelVersion.objects.select_for_update().filter(is_active=True).first()
        if previous is not None and previous.pk == version.pk:
            latest = version.activations.first()
            if latest is not None:
                return latest
        if previous is not None:
            # Deactivate first: the partial unique constraint allows one active row at any moment.
            ModelVersion.objects.filter(pk=previous.pk).update(is_active=False)
        ModelVersion.objects.filter(pk=version.pk).update(is_active=True)
        version.is_active = True
        return ModelActivation.objects.create(version=version, previous=previous, activated_by=user, note=note)


def model_version_rollback(*, user: AbstractBaseUser | None, note: str = "") -> ModelActivation:
    """Activate the version that the latest activation replaced.

    Raises ValidationError when there is none (only one version was ever activated).
    """
    latest = ModelActivation.objects.select_related("previous", "version").first()
    if latest is None or latest.previous is None:
        raise ValidationError("There is no earlier model version to roll back to.")
    return model_version_activate(
        version=latest.previous, user=user, note=note or f"Rolled back from {latest.version.name}."
    )


def _model_version_digest(version: ModelVersion) -> str:
    combined = "".join(f"{name}:{entry['sha256']};" for name, entry in sorted(version.files.items()))
    return hashlib.sha256(combined.encode()).hexdigest()[:16]


def model_version_local_dir(version: ModelVersion) -> Path:
    """A local directory with the version's files, downloaded from storage once per machine.

    Named by the files' hashes, so it can never hold another version's files; filled in a
    temporary directory and renamed into place, so a crash or a concurrent process never sees it
    half written. Every file of a cached copy is checked against its recorded SHA-256 before use
    (once per process and version: model_version_load keeps the loaded model), and a copy that
    does not match (truncated, altered on disk) is fetched again.
    Raises ValueError when the files in storage themselves do not match.
    """
    root = Path(settings.MODEL_CACHE_DIR)
    target = root / f"{version.name}-{_model_version_digest(version)}"
    if (target / runtime.METADATA_FILE).is_file():
        problem = _model_files_problem(target, {name: entry["sha256"] for name, entry in version.files.items()})
        if problem is None:
            return target
        logger.warning("model cache %s: %s; fetching it again from storage", target, problem)
        shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        for name, entry in version.files.items():
            digest = hashlib.sha256()
            with default_storage.open(entry["key"], "rb") as source, (staging / name).open("wb") as target_file:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    digest.update(chunk)
                    target_file.write(chunk)
            if digest.hexdigest() != entry["sha256"]:
                shipped = runtime.DEFAULT_MODEL_DIR / name
                if (
                    version.source != ModelVersion.Source.SHIPPED
                    or _model_files_problem(runtime.DEFAULT_MODEL_DIR, {name: entry["sha256"]}) is not None
                ):
                    raise ValueError(
                        f"model version {version.name}: {name} in storage does not match its recorded hash"
                    )
                # The shipped model's copy in storage was damaged: the checkout still has the right file.
                logger.error("model version %s: %s in storage is damaged; using the shipped copy", version.name, name)
                shutil.copyfile(shipped, staging / name)
        try:
            staging.rename(target)
        except OSError:
            if not (target / runtime.METADATA_FILE).is_file():
                raise  # not "another process got there first": a real error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_loaded_lock = threading.Lock()
_loaded: dict[str, runtime.Model] = {}


def _model_version_dir(version: ModelVersion) -> Path:
    """Where to load ``version`` from: the checkout's ml/weights/default when it is the shipped version and
    every one of its files there matches the recorded SHA-256 (no download: on Lambda a cold start would
    otherwise fetch ~25 MB from S3), else its local copy of the files in storage (model_version_local_dir)."""
    if version.source == ModelVersion.Source.SHIPPED:
        expected = {name: entry["sha256"] for name, entry in version.files.items()}
        if expected and _model_files_problem(runtime.DEFAULT_MODEL_DIR, expected) is None:
            return runtime.DEFAULT_MODEL_DIR
    return model_version_local_dir(version)


def model_version_load(version: ModelVersion) -> runtime.Model:
    """The version's ONNX model, loaded once per process (and dropped when another one is loaded)."""
    digest = _model_version_digest(version)
    with _loaded_lock:
        model = _loaded.get(digest)
        if model is None:
            model = runtime.load_model(_model_version_dir(version))
            _loaded.clear()
            _loaded[digest] = model
        return model


_active_versions: dict[tuple[int, str, str], ModelVersion] = {}
# Every reconstruction asks it (the upload and the worker): compiled once per connection (reconstruct/compiled.py).
_ACTIVE_VERSION_KEY = CompiledQuery(
    lambda: ModelVersion.objects.filter(is_active=True).only("id", "name", "source")[:1], []
)


def model_version_load_active() -> tuple[ModelVersion, runtime.Model]:
    """The active version and its model. One small query per call (the active version's id, name and source;
    its row, with kilobytes of JSON metadata, is read once per process and version, since a version's files
    never change): an activation in the admin reaches every process at its next reconstruction, without a
    restart and without reloading."""
    row = _ACTIVE_VERSION_KEY.first()
    version = _active_versions.get((row.pk, row.name, row.source)) if row is not None else None
    if version is None:
        version = model_version_ensure_active()
        _active_versions.clear()
        _active_versions[(version.pk, version.name, version.source)] = version
    return version, model_version_load(version)
