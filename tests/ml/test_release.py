"""The canonical release (ml/release.py): a tiny model trained on two folders with a facings file, exported
with its per-view metrics, the car check refitted for it and its model card, all or nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from ml import evaluate, framing, runtime
from ml.config import ModelConfig, TrainConfig
from ml.release import release
from ml.train import train
from tests.support import draw_car

TINY = TrainConfig(
    model=ModelConfig(height=16, width=32, latent_dim=8, widths=(8, 16)),
    batch_size=8,
    epochs=1,
    beta_warmup_epochs=1,
    val_fraction=0.3,
    patience=1,
    threads=1,
)


@dataclass(frozen=True)
class Release:
    root: Path
    folders: list[Path]
    facings: Path
    checkpoint: Path
    locator: Path
    noncars: Path
    out: Path
    result: dict


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Release:
    root = tmp_path_factory.mktemp("release")
    folders = [root / "cars", root / "more"]
    rows = ["file,facing"]
    for index, folder in enumerate(folders):
        folder.mkdir()
        for i in range(10):
            name = f"{folder.name}_{i}.png"
            car = draw_car((64, 32), seed=10 * index + i)  # 2:1: no letterbox bars, so mirroring is exact
            facing = ("left", "right", "front")[i % 3]
            (ImageOps.mirror(car) if facing == "right" else car).save(folder / name)
            rows.append(f"{name},{facing}")
    facings = root / "facings.csv"
    facings.write_text("\n".join(rows) + "\n")
    noncars = root / "noncars"
    noncars.mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (60, 30, 3), dtype=np.uint8)).save(
            noncars / f"thing_{i}.png"
        )
    # The shipped locator, with every drawn photo counted as held out (the real list names Stanford photos).
    locator = root / "locator"
    shutil.copytree(framing.LOCATOR_DIR, locator)
    metadata = json.loads((locator / "metadata.json").read_text())
    metadata["held_out"] = {"vae_val_names": [], "car_every": 1, "background_every": 1}
    (locator / "metadata.json").write_text(json.dumps(metadata))
    files = [f for folder in folders for f in sorted(folder.iterdir())]
    trained = train(TINY.replace(facings=str(facings)), files, root / "run", max_steps=2, show_bar=False)
    out = root / "weights" / "default"
    result = release(trained.best_checkpoint, out, folders, noncars, locator, recipe=None, composites=4, name="default")
    return Release(root, folders, facings, trained.best_checkpoint, locator, noncars, out, result)


def _metadata(model_dir: Path) -> dict:
    return json.loads((model_dir / "metadata.json").read_text())


def test_it_records_both_folders_the_facings_and_per_view_metrics(released: Release) -> None:
    metadata = _metadata(released.out)
    assert metadata["data"]["folders"] == [str(f) for f in released.folders]
    assert metadata["data"]["facings"]["sha256"] == hashlib.sha256(released.facings.read_bytes()).hexdigest()
    assert metadata["data"]["facings"]["counts"] == {"front": 6, "left": 8, "right": 6}
    metrics = metadata["metrics"]
    val = set(metadata["data"]["val_names"])
    labels = dict(line.split(",") for line in released.facings.read_text().split()[1:])
    side = [n for n in val if labels[n] in ("left", "right")]
    head_on = [n for n in val if labels[n] == "front"]
    assert metrics["n"] == len(val) == 6
    assert metrics.get("n_side") == (len(side) or None) and metrics.get("n_head_on") == (len(head_on) or None)
    for view, names in (("side", side), ("head_on", head_on)):
        if names:
            assert {f"psnr_{view}", f"baseline_thumb16_psnr_{view}", f"kl_{view}"} <= set(metrics)
    assert set(metrics["by_folder"]) == {"cars", "more"}
    assert sum(part["n"] for part in metrics["by_folder"].values()) == 6
    assert metadata["latent_pca"]["n"] == 14 and metadata["latent_map"]["bounds"]
    assert metadata["training"]["history"][0]["epoch"] == 1


def test_a_right_facing_photo_is_measured_as_its_mirror_facing_left(released: Release, tmp_path: Path) -> None:
    model = runtime.Model(released.out)
    right = released.folders[0] / "cars_1.png"  # drawn facing left, saved mirrored, labelled right
    left = tmp_path / "twin.png"
    ImageOps.mirror(Image.open(right)).save(left)
    as_trained = evaluate.score_file(model, right, locate=False, facing="right")
    twin = evaluate.score_file(model, left, locate=False, facing="left")
    unturned = evaluate.score_file(model, right, locate=False)
    assert as_trained["mirrored"] and as_trained["psnr"] == twin["psnr"] and as_trained["kl"] == twin["kl"]
    assert unturned["kl"] != twin["kl"]
    # The mean image and the latent map see the training photos the same way: mirrored right-facing ones.
    from ml.export import canonical_training_images

    labels = {"cars_1.png": "right", "twin.png": "left"}
    turned = canonical_training_images([right, left], [], model.config, labels, tmp_path / "none")
    assert np.array_equal(turned.pixels[0], turned.pixels[1])


def test_it_refits_the_car_check_into_the_model_the_locator_and_the_card(released: Release) -> None:
    metadata = _metadata(released.out)
    check = metadata["car_check"]
    assert check == released.result["car_check"]
    assert check["vae"] == metadata["version"] and check["n_noncars"] == 6 and check["n_composites"] == 4
    assert check["n_crops"] == len(metadata["data"]["val_names"])
    assert 0 <= check["false_reject_rate"] <= 1 and 0 <= check["false_accept_rate"] <= 1
    locator = framing.CarLocator(released.locator)
    assert {k: locator.metadata["check"][k] for k in "abc"} == {k: check[k] for k in "abc"}
    assert locator.metadata["held_out"]["car_every"] == 1  # the rest of the locator's metadata is kept
    model = runtime.Model(released.out)
    assert framing.car_check_constants(model, locator) == check  # fitted with this locator: the model's own
    model.metadata["car_check"] = {**check, "locator_sha256": "0" * 64}  # fitted with another locator
    assert framing.car_check_constants(model, locator) == locator.metadata["check"]
    card = (released.out / "MODEL_CARD.md").read_text()
    assert metadata["version"] in card and f"a = {check['a']}" in card
    assert "side views" in card or "head-on views" in card
    # The int8 step's outcome, applied or refused, with its held-out check.
    quantization = metadata["quantization"]
    assert "## Quantisation" in card and f"Checked on {quantization['check']['n']} held-out photos" in card
    assert ("run in int8" in card) == bool(quantization["applied"])


def test_its_files_match_their_sha256_and_the_registry_accepts_it(released: Release, db) -> None:
    from reconstruct.models import ModelVersion
    from reconstruct.registry.services import model_version_register

    for name, entry in _metadata(released.out)["files"].items():
        assert hashlib.sha256((released.out / name).read_bytes()).hexdigest() == entry["sha256"]
    version = model_version_register(model_dir=released.out, source=ModelVersion.Source.TRAINED)
    assert version.name == _metadata(released.out)["version"] and "car_check" in version.metadata
    assert version.metrics["psnr"] == _metadata(released.out)["metrics"]["psnr"]


def test_a_failed_release_leaves_the_model_and_the_locator_as_they_were(released: Release, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in released.out.iterdir()}
    locator_before = (released.locator / "metadata.json").read_bytes()
    with pytest.raises(ValueError, match="validation images"):  # a folder training used is left out
        release(released.checkpoint, released.out, released.folders[:1], released.noncars, released.locator)
    changed = tmp_path / "facings.csv"
    changed.write_text(released.facings.read_text().replace("left", "right", 1))
    with pytest.raises(ValueError, match="not the facings file"):
        release(
            released.checkpoint, released.out, released.folders, released.noncars, released.locator, facings=changed
        )
    assert {p.name: p.read_bytes() for p in released.out.iterdir()} == before
    assert (released.locator / "metadata.json").read_bytes() == locator_before
    assert sorted(p.name for p in released.out.parent.iterdir()) == ["default"]
