"""`make loadtest` works end to end (a few seconds, two users, drawn cars): the stack comes up through
runlocal, every accepted upload is reconstructed and checked, and the last line is the JSON report. Its
figures are speed, which is never asserted here."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_module_json

pytestmark = pytest.mark.integration

KEYS = {
    "users", "seconds", "requests", "errors", "accepted", "done", "failed", "recon_per_s", "p50_s", "p95_s",
    "cpu_ms_per_recon", "cpu_ms_per_recon_by_process",
}  # fmt: skip


def test_it_loads_the_real_stack_and_reports_json_last(drawn_cars: Path) -> None:
    report, output = run_module_json("loadtest", "--users", "2", "--seconds", "3", "--images", str(drawn_cars))
    assert set(report) >= KEYS
    assert report["users"] == 2 and report["seconds"] == 3
    assert report["accepted"] > 0 and report["done"] == report["accepted"], report
    assert report["errors"] == 0 and report["failed"] == 0, output
    assert report["requests"] >= 3 * report["done"]  # the upload (which waits for the result), the PNG, the gallery
    assert report["mode"] == "upload-wait"
    assert {"web", "worker", "redis", "loadgen"} <= set(report["cpu_ms_per_recon_by_process"])
    assert 0 < report["p50_s"] <= report["p95_s"]
    assert report["workdir"]["filesystem"] and report["workdir"]["file_create_ms"] >= 0
    assert report["workdir"]["kept"] is False and not Path(report["workdir"]["path"]).exists()  # removed after
    assert report["python"]["version"] == platform.python_version()
    assert report["python"]["executable"] == os.path.realpath(sys._base_executable)  # the same .venv's interpreter


@pytest.mark.django_db
def test_its_browsers_are_signed_in_and_hold_a_csrf_cookie(tmp_path: Path, client: Any) -> None:
    """As a browser that signed in through the form: the gallery opens, and no page has to make a new CSRF secret
    (Django sets the same cookie again, to renew its expiry)."""
    from django.conf import settings

    from loadtest.__main__ import accounts_create

    accounts_create(2, tmp_path / "accounts.json")
    accounts = json.loads((tmp_path / "accounts.json").read_text())
    assert len({account["cookie"] for account in accounts}) == 2
    for account in accounts:
        page = client.get("/gallery/", HTTP_COOKIE=account["cookie"])
        assert page.status_code == 200 and account["username"] in page.content.decode()
        held = account["cookie"].split(f"{settings.CSRF_COOKIE_NAME}=")[1]
        assert page.cookies[settings.CSRF_COOKIE_NAME].value == held


@pytest.mark.browser
def test_the_browser_benchmark_signs_in_uploads_and_reports_json_last(drawn_cars: Path) -> None:
    """`make bench-browser` (loadtest/browser.py) for two uploads: its browser holds the accounts' cookies."""
    report, output = run_module_json("loadtest.browser", "--uploads", "2", "--images", str(drawn_cars))
    assert report["uploads"] == 2 and report["reloads"] == 0, output
    assert 0 < report["p50_visible_s"] <= report["max_visible_s"]


def test_its_files_go_to_a_ram_folder_when_there_is_one_and_the_probe_keeps_its_files(tmp_path: Path) -> None:
    """The run's directory goes to /dev/shm when that is a tmpfs with room (what a file creation costs on a disk
    depends on what was deleted there before), else the temporary folder; the report names the filesystem."""
    import tempfile

    from loadtest.__main__ import RAM_FOLDER, default_tmpdir, file_create_ms, filesystem_of

    assert filesystem_of(Path("/proc")) == "proc"
    assert filesystem_of(tmp_path) not in ("", "proc")
    ram = filesystem_of(RAM_FOLDER) == "tmpfs"
    assert default_tmpdir() in (RAM_FOLDER, Path(tempfile.gettempdir()))
    if ram:
        assert filesystem_of(RAM_FOLDER / "some" / "file") == "tmpfs"
    assert file_create_ms(tmp_path / "probe", count=5, size=100) >= 0
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == [f"probe-{i}" for i in range(5)]
