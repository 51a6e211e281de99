"""`python -m loadtest.profile` names where a reconstruction's CPU goes: every stage of the worker's job and of
the upload is found in the profile (a stage whose function was renamed or moved would read 0.00 and leave its
time in "other", as PNG encodes, storage writes and the result's UPDATE did after the job was split into the
claim and ``_reconstruction_attempt``). Its figures are speed, which is never asserted here."""

from __future__ import annotations

from pathlib import Path

from loadtest.profile import STAGES
from tests.support import run_module_json


def test_every_stage_of_a_round_is_found_in_the_profile(drawn_cars: Path) -> None:
    report, _output = run_module_json("loadtest.profile", "--count", "2", "--images", str(drawn_cars))
    assert set(report["parts"]) == set(STAGES)
    for part, stages in STAGES.items():
        table = report["parts"][part]
        assert table["total without profiler"] > 0, part
        unfound = [stage for stage, _functions in stages if table[stage] <= 0]
        assert not unfound, f"{part}: no time found for {unfound} (renamed or moved functions?)"
