import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml.train import DRY_RUN_CONFIG, Cancelled, _dry_run_data, load_checkpoint, main, train


@pytest.fixture
def tiny_photos(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    files = _dry_run_data(folder, count=10)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return [*files, folder / "broken.jpg"]


def test_it_runs_the_dry_run_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--dry-run", "--out", str(tmp_path / "run")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["dry_run"] is True
    assert np.isfinite(result["mse"]) and np.isfinite(result["kl"])
    for name in ("best.pt", "last.pt", "history.json", "loss_curve.png", "val_reconstructions.png"):
        assert (tmp_path / "run" / name).exists()
    assert Image.open(tmp_path / "run" / "loss_curve.png").size[0] > 100


def test_it_saves_a_checkpoint_that_rebuilds_the_model_from_the_file_alone(tiny_photos, tmp_path: Path) -> None:
    result = train(DRY_RUN_CONFIG, tiny_photos, tmp_path / "run", show_bar=False)
    model, checkpoint = load_checkpoint(result.best_checkpoint)
    assert model.config == DRY_RUN_CONFIG.model
    assert checkpoint["data"]["images"] == 10 and checkpoint["data"]["skipped"] == 1
    assert len(checkpoint["val_names"]) == 1
    x = torch.rand(1, 3, 16, 32)
    assert model.reconstruct(x).shape == x.shape


def test_it_is_deterministic_for_a_seed(tiny_photos, tmp_path: Path) -> None:
    one = train(DRY_RUN_CONFIG, tiny_photos, tmp_path / "a", show_bar=False)
    two = train(DRY_RUN_CONFIG, tiny_photos, tmp_path / "b", show_bar=False)
    assert one.best_val == two.best_val
    other = train(DRY_RUN_CONFIG.replace(seed=1), tiny_photos, tmp_path / "c", show_bar=False)
    assert other.best_val != one.best_val


def test_it_resumes_where_it_stopped_and_matches_an_unbroken_run(tiny_photos, tmp_path: Path) -> None:
    config = DRY_RUN_CONFIG.replace(epochs=3, patience=10)
    unbroken = train(config, tiny_photos, tmp_path / "full", show_bar=False)
    train(config.replace(epochs=2), tiny_photos, tmp_path / "part", show_bar=False)
    # The config must match to resume; rewrite the stored epoch budget as a person would by
    # re-running with the same config file after an interruption.
    checkpoint = torch.load(tmp_path / "part" / "last.pt", weights_only=False)
    checkpoint["config"] = config.to_dict()
    torch.save(checkpoint, tmp_path / "part" / "last.pt")
    resumed = train(config, tiny_photos, tmp_path / "part", resume=True, show_bar=False)
    assert resumed.epochs_run == unbroken.epochs_run == 3
    history = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    full = json.loads((tmp_path / "full" / "history.json").read_text())
    assert history[-1]["val_mse"] == pytest.approx(full[-1]["val_mse"], rel=1e-5)


def test_it_refuses_to_resume_a_run_with_another_config(tiny_photos, tmp_path: Path) -> None:
    train(DRY_RUN_CONFIG, tiny_photos, tmp_path / "run", show_bar=False)
    with pytest.raises(ValueError, match="another config"):
        train(DRY_RUN_CONFIG.replace(lr=0.01), tiny_photos, tmp_path / "run", resume=True, show_bar=False)


def test_it_reports_progress_each_epoch_and_can_be_cancelled(tiny_photos, tmp_path: Path) -> None:
    seen: list[dict] = []
    config = DRY_RUN_CONFIG.replace(epochs=5, patience=10)
    with pytest.raises(Cancelled):
        train(
            config,
            tiny_photos,
            tmp_path / "run",
            progress=seen.append,
            should_stop=lambda: len(seen) >= 2,
            show_bar=False,
        )
    assert [p["epoch"] for p in seen] == [1, 2]
    assert {"train_mse", "val_kl", "eta_seconds", "epochs"} <= set(seen[0])
    assert (tmp_path / "run" / "last.pt").exists()


def test_it_stops_early_on_a_validation_plateau(tiny_photos, tmp_path: Path) -> None:
    config = DRY_RUN_CONFIG.replace(epochs=40, patience=1, min_delta=10.0, beta_warmup_epochs=0)
    result = train(config, tiny_photos, tmp_path / "run", show_bar=False)
    assert result.stopped_early
    assert result.epochs_run < 40


def test_it_refuses_a_folder_without_readable_images(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="at least 2 readable images"):
        train(DRY_RUN_CONFIG, [tmp_path / "x.jpg"], tmp_path / "run", show_bar=False)


def test_it_follows_the_beta_schedule_between_its_points() -> None:
    from ml.train import beta_at

    config = DRY_RUN_CONFIG.replace(beta_schedule=((0, 0.0), (5, 1.0), (20, 1.0), (24, 0.1)))
    assert [beta_at(config, e) for e in (0, 2.5, 5, 19, 22, 24, 60)] == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 0.55, 0.1, 0.1]
    )
    assert beta_at(DRY_RUN_CONFIG.replace(beta_warmup_epochs=4, beta=2.0), 1) == pytest.approx(0.5)


def test_it_shifts_and_jitters_only_the_photo_and_keeps_its_box_exact() -> None:
    from ml.train import _augment

    config = DRY_RUN_CONFIG.replace(shift=3, jitter=0.3)
    x = np.full((4, 3, 16, 32), config.model.pad_value, dtype=np.float32)
    boxes = np.array([[0, 4, 32, 12]] * 4, dtype=np.int32)
    x[:, :, 4:12, :] = 0.8
    _augment(x, boxes, config, np.random.default_rng(0))
    for image, (left, top, right, bottom) in zip(x, boxes, strict=True):
        inside = np.zeros((16, 32), bool)
        inside[top:bottom, left:right] = True
        assert np.all(image[:, ~inside] == config.model.pad_value)
        assert 0 <= left < right <= 32 and 0 <= top < bottom <= 16
    assert not np.all(boxes == [0, 4, 32, 12])


def test_it_trains_with_augmentation_and_weight_averaging_and_resumes_identically(tiny_photos, tmp_path) -> None:
    config = DRY_RUN_CONFIG.replace(epochs=3, patience=10, shift=2, jitter=0.2, ema_decay=0.9)
    unbroken = train(config, tiny_photos, tmp_path / "full", show_bar=False)
    train(config.replace(epochs=2), tiny_photos, tmp_path / "part", show_bar=False)
    checkpoint = torch.load(tmp_path / "part" / "last.pt", weights_only=False)
    assert "train_model" in checkpoint
    checkpoint["config"] = config.to_dict()
    torch.save(checkpoint, tmp_path / "part" / "last.pt")
    train(config, tiny_photos, tmp_path / "part", resume=True, show_bar=False)
    full = json.loads((tmp_path / "full" / "history.json").read_text())
    part = json.loads((tmp_path / "part" / "history.json").read_text())
    assert part[-1]["val_mse"] == pytest.approx(full[-1]["val_mse"], rel=1e-5)
    model, _ = load_checkpoint(unbroken.best_checkpoint)
    assert model.reconstruct(torch.rand(1, 3, 16, 32)).shape == (1, 3, 16, 32)


def _facings_csv(path: Path, photos: list[Path], facing_of) -> Path:
    rows = ["file,facing"] + [f"{p.name},{facing_of(i)}" for i, p in enumerate(photos) if p.name != "broken.jpg"]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_it_turns_right_facing_photos_to_face_left_and_resumes_identically(tiny_photos, tmp_path: Path) -> None:
    facings = _facings_csv(tmp_path / "facings.csv", tiny_photos, lambda i: ("left", "right", "front", "rear")[i % 4])
    config = DRY_RUN_CONFIG.replace(epochs=3, patience=10, facings=str(facings))
    train(config, tiny_photos, tmp_path / "full", show_bar=False)
    train(config.replace(epochs=2), tiny_photos, tmp_path / "part", show_bar=False)
    checkpoint = torch.load(tmp_path / "part" / "last.pt", weights_only=False)
    checkpoint["config"] = config.to_dict()
    torch.save(checkpoint, tmp_path / "part" / "last.pt")
    train(config, tiny_photos, tmp_path / "part", resume=True, show_bar=False)
    full = json.loads((tmp_path / "full" / "history.json").read_text())
    part = json.loads((tmp_path / "part" / "history.json").read_text())
    assert part[-1]["val_mse"] == pytest.approx(full[-1]["val_mse"], rel=1e-5)
    data = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["data"]
    assert data["mirrored"] == 3  # photos 1, 5 and 9 face right
    assert np.isfinite(data["val_thumb16_psnr"])
    # The one validation photo is reported in its group (side or head-on) as well as overall.
    assert {"val_psnr_side", "val_psnr_head_on"} & set(full[-1])


def test_it_mirrors_what_validation_sees_by_the_facings_file(tiny_photos, tmp_path: Path) -> None:
    config = DRY_RUN_CONFIG.replace(epochs=1, hflip=False)
    runs = {}
    for facing in ("left", "right"):
        facings = _facings_csv(tmp_path / f"{facing}.csv", tiny_photos, lambda i, f=facing: f)
        runs[facing] = train(config.replace(facings=str(facings)), tiny_photos, tmp_path / facing, show_bar=False)
    assert runs["left"].best_val["mse"] != runs["right"].best_val["mse"]
    assert torch.load(tmp_path / "right" / "last.pt", weights_only=False)["data"]["mirrored"] == 10


def test_it_refuses_a_facings_file_that_misses_photos(tiny_photos, tmp_path: Path) -> None:
    facings = tmp_path / "facings.csv"
    facings.write_text(f"file,facing\n{tiny_photos[0].name},left\n")
    with pytest.raises(ValueError, match="no facing for 9 photos"):
        train(DRY_RUN_CONFIG.replace(facings=str(facings)), tiny_photos, tmp_path / "run", show_bar=False)


def test_it_refuses_to_resume_when_the_facings_file_changed(tiny_photos, tmp_path: Path) -> None:
    facings = _facings_csv(tmp_path / "facings.csv", tiny_photos, lambda i: "left")
    config = DRY_RUN_CONFIG.replace(facings=str(facings))
    train(config, tiny_photos, tmp_path / "run", show_bar=False)
    _facings_csv(facings, tiny_photos, lambda i: "right")
    with pytest.raises(ValueError, match=r"another .*facings\.csv"):
        train(config, tiny_photos, tmp_path / "run", resume=True, show_bar=False)
