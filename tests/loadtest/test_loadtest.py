"""`make loadtest` works end to end (a few seconds, two users, drawn cars): the stack comes up through
runlocal, every accepted upload is reconstructed and checked, and the last line is the JSON report. Its
figures are speed, which is never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, draw_car, encode

pytestmark = pytest.mark.integration

KEYS = {
    "users", "seconds", "requests", "errors", "accepted", "done", "failed", "recon_per_s", "p50_s", "p95_s",
    "cpu_ms_per_recon", "cpu_ms_per_recon_by_process",
}  # fmt: skip


def test_it_loads_the_real_stack_and_reports_json_last(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, colour in enumerate([(200, 30, 30), (30, 60, 200), (40, 160, 60)]):
        (photos / f"car{index}.jpg").write_bytes(encode(draw_car((320, 160), colour), "JPEG", quality=90))
    result = subprocess.run(
        [sys.executable, "-m", "loadtest", "--users", "2", "--seconds", "3", "--images", str(photos)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) >= KEYS
    assert report["users"] == 2 and report["seconds"] == 3
    assert report["accepted"] > 0 and report["done"] == report["accepted"], report
    assert report["errors"] == 0 and report["failed"] == 0, result.stdout
    assert report["requests"] >= 3 * report["done"]  # the upload (which waits for the result), the PNG, the gallery
    assert report["mode"] == "upload-wait"
    assert {"web", "worker", "redis", "loadgen"} <= set(report["cpu_ms_per_recon_by_process"])
    assert 0 < report["p50_s"] <= report["p95_s"]
