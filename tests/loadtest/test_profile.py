"""`python -m loadtest.profile` names where a reconstruction's CPU goes: every stage of the worker's job and of
the upload is found in the profile (a stage whose function was renamed or moved would read 0.00 and leave its
time in "other", as PNG encodes, storage writes and the result's UPDATE did after the job was split into the
claim and ``_reconstruction_attempt``). Its figures are speed, which is never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loadtest.profile import STAGES
from tests.support import ROOT, draw_car, encode


def test_every_stage_of_a_round_is_found_in_the_profile(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, colour in enumerate([(200, 30, 30), (30, 60, 200)]):
        (photos / f"car{index}.jpg").write_bytes(encode(draw_car((320, 160), colour), "JPEG", quality=90))
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.profile", "--count", "2", "--images", str(photos)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report["parts"]) == set(STAGES)
    for part, stages in STAGES.items():
        table = report["parts"][part]
        assert table["total without profiler"] > 0, part
        unfound = [stage for stage, _functions in stages if table[stage] <= 0]
        assert not unfound, f"{part}: no time found for {unfound} (renamed or moved functions?)"
