"""The model registry: the shipped default, activation with an audit trail, and every process
picking up the active version without a restart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from ml import runtime
from reconstruct.models import ModelActivation, ModelVersion
from reconstruct.registry.selectors import model_version_active
from reconstruct.registry.services import (
    model_version_activate,
    model_version_ensure_active,
    model_version_load,
    model_version_load_active,
    model_version_local_dir,
    model_version_register,
    model_version_register_shipped,
)
from reconstruct.services.reconstructions import reconstruction_create
from tests.support import upload


@pytest.fixture
def second_model_dir(tmp_path: Path) -> Path:
    """The shipped model under another version name (same weights): a stand-in for a trained one."""
    directory = tmp_path / "second"
    shutil.copytree(runtime.DEFAULT_MODEL_DIR, directory)
    metadata = json.loads((directory / "metadata.json").read_text())
    metadata["version"] = "second-test-version"
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return directory


def test_it_registers_and_activates_the_shipped_model_once(db) -> None:
    first = model_version_ensure_active()
    second = model_version_ensure_active()
    assert first.pk == second.pk
    assert ModelVersion.objects.count() == 1
    assert first.is_active and first.source == ModelVersion.Source.SHIPPED
    assert set(first.files) >= {"encoder.onnx", "decoder.onnx", "metadata.json"}
    assert first.files["encoder.onnx"]["key"] == f"models/{first.name}/encoder.onnx"
    activation = ModelActivation.objects.get()
    assert (activation.version, activation.previous, activation.activated_by) == (first, None, None)


def test_it_registers_the_default_lazily_on_first_use(db) -> None:
    assert not ModelVersion.objects.exists()
    assert model_version_ensure_active().source == ModelVersion.Source.SHIPPED


def test_it_allows_only_one_active_version(db, second_model_dir: Path) -> None:
    model_version_ensure_active()
    other = model_version_register(model_dir=second_model_dir, source=ModelVersion.Source.TRAINED)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=other.pk).update(is_active=True)


def test_it_records_who_activated_what(alice, second_model_dir: Path) -> None:
    default = model_version_ensure_active()
    other = model_version_register(model_dir=second_model_dir, source=ModelVersion.Source.TRAINED, created_by=alice)
    activation = model_version_activate(version=other, user=alice, note="better PSNR")
    assert (activation.version, activation.previous, activation.activated_by, activation.note) == (
        other,
        default,
        alice,
        "better PSNR",
    )
    assert list(ModelVersion.objects.filter(is_active=True)) == [other]
    model_version_activate(version=default, user=alice, note="roll back")
    assert model_version_ensure_active() == default
    assert ModelActivation.objects.count() == 3


def test_it_refuses_a_directory_without_a_model(db, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing encoder\.onnx"):
        model_version_register(model_dir=tmp_path, source=ModelVersion.Source.TRAINED)
    assert not ModelVersion.objects.exists()


def test_it_refuses_a_second_version_with_the_same_name(db) -> None:
    model_version_register_shipped()
    with pytest.raises(ValueError, match="already registered"):
        model_version_register(model_dir=runtime.DEFAULT_MODEL_DIR, source=ModelVersion.Source.TRAINED)


@pytest.mark.parametrize("moment", ["before the copy", "during the copy"])
def test_it_returns_the_winners_row_when_another_request_registers_the_shipped_model_first(
    db, monkeypatch, moment: str
) -> None:
    # A page's images are requested in parallel, and each may be the first to need the shipped model (the
    # CI failure of stop 17: "already registered" became a 500). Another request wins the race either
    # before this one checks the name or while it copies the files; this one then returns the winner's row.
    from reconstruct.registry import services

    winner: list[ModelVersion] = []

    def register_elsewhere() -> None:
        if not winner:
            winner.append(ModelVersion.objects.create(name=_shipped_name(), source=ModelVersion.Source.SHIPPED))

    if moment == "before the copy":
        real_load = services.runtime.load_model
        monkeypatch.setattr(services.runtime, "load_model", lambda d: (register_elsewhere(), real_load(d))[1])
    else:
        real_save = services.default_storage.save
        monkeypatch.setattr(
            services.default_storage, "save", lambda *a, **k: (register_elsewhere(), real_save(*a, **k))[1]
        )
    assert model_version_register_shipped() == winner[0]
    assert ModelVersion.objects.count() == 1
    # The loser's copies are removed: only the winner's (here none) stay in storage.
    assert not default_storage.exists(f"models/{_shipped_name()}/metadata.json")


def _shipped_name() -> str:
    return str(json.loads((runtime.DEFAULT_MODEL_DIR / runtime.METADATA_FILE).read_text())["version"])


def test_it_uses_a_newly_activated_model_without_a_restart(
    settings, alice, second_model_dir: Path, car_png: bytes
) -> None:
    before = reconstruction_create(user=alice, upload=upload(car_png))
    other = model_version_register(model_dir=second_model_dir, source=ModelVersion.Source.TRAINED)
    model_version_activate(version=other, user=alice)
    after = reconstruction_create(user=alice, upload=upload(car_png))
    assert before.model_version.source == ModelVersion.Source.SHIPPED
    assert after.model_version == other
    version, model = model_version_load_active()
    assert (version, model.version) == (other, "second-test-version")
    # Loaded from the process's local copy of the files in storage, not from ml/weights.
    assert Path(model.model_dir).parent == Path(settings.MODEL_CACHE_DIR)


def test_it_loads_the_shipped_model_from_the_checkout_without_downloading_it(
    db, settings, monkeypatch, tmp_path: Path
) -> None:
    from reconstruct.registry import services

    settings.MODEL_CACHE_DIR = tmp_path / "cache"  # this test's own: nothing downloaded by other tests
    monkeypatch.setattr(services, "_loaded", {})
    version = model_version_ensure_active()
    model = model_version_load(version)
    assert Path(model.model_dir) == runtime.DEFAULT_MODEL_DIR
    assert not list(Path(settings.MODEL_CACHE_DIR).glob("*/encoder.onnx"))
    # A checkout whose files are not the recorded ones (edited, or another export) is not used.
    altered = tmp_path / "checkout"
    shutil.copytree(runtime.DEFAULT_MODEL_DIR, altered)
    (altered / runtime.DECODER_FILE).write_bytes(b"not the recorded decoder")
    monkeypatch.setattr(runtime, "DEFAULT_MODEL_DIR", altered)
    monkeypatch.setattr(services, "_loaded", {})
    model = model_version_load(version)
    assert Path(model.model_dir).parent == Path(settings.MODEL_CACHE_DIR)


def test_it_loads_each_version_once_per_process(db) -> None:
    version = model_version_ensure_active()
    assert model_version_load(version) is model_version_load(version)


def test_it_registers_the_shipped_model_without_activating_it(db) -> None:
    version = model_version_register_shipped()
    assert model_version_register_shipped() == version
    assert version.source == ModelVersion.Source.SHIPPED
    assert not version.is_active
    assert model_version_active() is None  # reading never registers or activates anything
    assert not ModelActivation.objects.exists()
    assert model_version_ensure_active() == version
    assert model_version_active() == version


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_it_fetches_a_damaged_cached_file_again(db, damage: str) -> None:
    version = model_version_ensure_active()
    cached = model_version_local_dir(version) / runtime.ENCODER_FILE
    good = cached.read_bytes()
    if damage == "truncated":
        cached.write_bytes(good[: len(good) // 2])
    else:  # one bit of one weight: the file still loads, and would give wrong results
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0x40
        cached.write_bytes(bytes(flipped))
    assert model_version_local_dir(version) == cached.parent
    assert cached.read_bytes() == good


def test_it_falls_back_on_the_checkouts_copy_when_the_shipped_models_stored_copy_is_damaged(db) -> None:
    version = model_version_ensure_active()
    cached = model_version_local_dir(version) / runtime.ENCODER_FILE
    good = cached.read_bytes()
    stored = Path(default_storage.path(version.files[runtime.ENCODER_FILE]["key"]))
    stored.write_bytes(good[:1000])
    cached.write_bytes(good[:1000])
    assert model_version_local_dir(version) == cached.parent
    assert cached.read_bytes() == good


def test_it_refuses_to_register_weights_that_do_not_match_the_export(db, second_model_dir: Path) -> None:
    decoder = second_model_dir / runtime.DECODER_FILE
    data = bytearray(decoder.read_bytes())
    data[len(data) // 2] ^= 0x01
    decoder.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"decoder\.onnx does not match its recorded SHA-256"):
        model_version_register(model_dir=second_model_dir, source=ModelVersion.Source.TRAINED)
    assert not ModelVersion.objects.filter(name="second-test-version").exists()


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_it_never_marks_done_a_reconstruction_with_non_finite_outputs(alice, second_model_dir: Path, car_png) -> None:
    import hashlib

    import onnx
    from onnx import numpy_helper

    # Weights that load and run but give NaN everywhere (the export's hashes recorded for them, as a bad export would).
    path = second_model_dir / runtime.DECODER_FILE
    graph = onnx.load(str(path))
    biggest = max(graph.graph.initializer, key=lambda t: len(t.raw_data or b"") if t.data_type == 1 else 0)
    biggest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(biggest) * float("nan"), biggest.name))
    onnx.save(graph, str(path))
    metadata = json.loads((second_model_dir / "metadata.json").read_text())
    metadata["files"][runtime.DECODER_FILE]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (second_model_dir / "metadata.json").write_text(json.dumps(metadata))
    version = model_version_register(model_dir=second_model_dir, source=ModelVersion.Source.TRAINED)
    model_version_activate(version=version, user=None)

    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    reconstruction.refresh_from_db()
    assert reconstruction.status == "failed" and "invalid numbers" in reconstruction.error
    assert reconstruction.psnr is None and not reconstruction.reconstruction
