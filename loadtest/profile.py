"""python -m loadtest.profile: where one reconstruction's CPU goes, stage by stage (cProfile, CPU clock).

Runs in one process with its own SQLite database and media folder (a temporary directory): for each photo,
the requests of one user's round as in ``make loadtest`` through Django's test client (upload through the
API, the status, the reconstruction's PNG, the gallery, the result page) and the worker's job
(``reconstruction_run``, called directly). Not here, and in ``make loadtest``'s figures per process: the
queue (Celery's publish, Redis, the worker's own loop) and the notice to waiting clients; the hourly upload
limit (one query per upload) is off, as in the load test.
Each part is profiled with ``cProfile.Profile(time.process_time)``; a stage is the cumulative CPU time of the
functions that do it (called from the named caller), in ms per reconstruction. ``other`` is the rest of
that part (Django's request handling, middleware, templates' own work, the profiler's overhead).

cProfile adds overhead per Python call, so totals here are higher than without it; the stages compare.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from loadtest import photos_in, site_env

ROOT = Path(__file__).resolve().parent.parent

# part -> [(stage, [(file suffix, function, caller function or None)])]
STAGES: dict[str, list[tuple[str, list[tuple[str, str, str | None]]]]] = {
    "web: upload (POST /api/reconstructions/)": [
        ("multipart parsing", [("multipartparser.py", "parse", None)]),
        ("token authentication", [("reconstruct/auth.py", "authenticate_token", None)]),
        ("decode (+ orientation, colour, reduced)", [("ml/decode.py", "image_decode", "upload_prepare")]),
        ("original for storage (kept or re-encoded)", [("images.py", "original_for_storage", "upload_prepare")]),
        ("thumbnail (resize, JPEG)", [("images.py", "thumbnail_jpeg", "upload_prepare")]),
        ("storage writes", [("reconstruct/storage.py", "storage_save_all", "reconstruction_create")]),
        ("DB writes", [("models/query.py", "create", None)]),
        ("JSON response", [("presenters.py", "reconstruction_json", None)]),
    ],
    "worker: reconstruction_run": [
        ("DB: claim the row", [("reconstructions.py", "_reconstruction_claim", "reconstruction_run")]),
        (
            "active model lookup (DB)",
            [("registry/services.py", "model_version_load_active", "_reconstruction_attempt")],
        ),
        ("storage read", [("storage/base.py", "open", "_reconstruction_attempt")]),
        ("decode (+ orientation, colour, reduced)", [("ml/decode.py", "image_decode", "photo_reconstruct")]),
        ("car locator (ONNX Runtime)", [("framing.py", "locate", "locator_evidence")]),
        ("facing classifier (ONNX Runtime)", [("framing.py", "facing", "_reconstruct_frame")]),
        (
            "frame, mirror, letterbox",
            [("framing.py", "model_view", "_reconstruct_frame"), ("runtime.py", "prepare", "reconstruct")],
        ),
        ("model (ONNX Runtime)", [("runtime.py", "run", "reconstruct")]),
        ("scores", [("runtime.py", "scores_from_arrays", "reconstruct")]),
        ("output pictures", [("preprocess.py", "to_image", "reconstruct")]),
        ("PNG encodes", [("reconstruct/images.py", "png_bytes", "_reconstruction_attempt")]),
        ("storage writes", [("reconstruct/storage.py", "storage_save_all", "_reconstruction_attempt")]),
        ("DB: result UPDATE", [("reconstructions.py", "_reconstruction_finish", "_reconstruction_attempt")]),
    ],
    "web: status (GET /api/reconstructions/<id>/)": [
        ("token authentication", [("reconstruct/auth.py", "authenticate_token", None)]),
        ("DB read", [("reconstruct/compiled.py", "first", "reconstruction_get")]),
        ("JSON", [("presenters.py", "reconstruction_json", None)]),
    ],
    "web: reconstruction PNG (GET /r/<id>/files/reconstruction)": [
        ("token authentication", [("reconstruct/auth.py", "authenticate_token", None)]),
        ("DB read", [("reconstruct/compiled.py", "first", "reconstruction_files_get")]),
        ("serve from storage", [("reconstruct/storage.py", "storage_serve", None)]),
    ],
    "web: gallery (GET /gallery/)": [
        ("session + user (DB)", [("auth/middleware.py", "get_user", None)]),
        ("page query (DB)", [("paginator.py", "get_page", None), ("paginator.py", "page", None)]),
        ("template rendering", [("shortcuts.py", "render", "gallery")]),
    ],
    "web: result page (GET /r/<id>/)": [
        ("session + user (DB)", [("auth/middleware.py", "get_user", None)]),
        ("template rendering", [("shortcuts.py", "render", "detail")]),
    ],
}


def _cumulative(stats: pstats.Stats, file: str, function: str, caller: str | None) -> float:
    total = 0.0
    for (path, _line, name), (_cc, _nc, _tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name != function or not path.endswith(file):
            continue
        if caller is None:
            total += ct
        else:
            total += sum(v[3] for (_p, _l, n), v in callers.items() if n == caller)
    return total


def part_table(profile: cProfile.Profile, part: str, count: int) -> dict[str, float]:
    """The stages of ``part`` in ms of CPU per round, with ``total`` and ``other``."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    table: dict[str, float] = {}
    for stage, functions in STAGES[part]:
        seconds = sum(_cumulative(stats, *f) for f in functions)
        table[stage] = round(1000 * seconds / count, 2)
    table["other"] = round(1000 * total / count - sum(table.values()), 2)
    table["total"] = round(1000 * total / count, 2)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/cars")
    parser.add_argument("--count", type=int, default=50, help="photos (rounds) to profile")
    parser.add_argument("--dump", type=Path, help="also write each part's pstats file into this folder")
    args = parser.parse_args(argv)
    photos = photos_in(args.images)
    photos = random.Random(0).sample(photos, min(args.count, len(photos)))

    workdir = Path(tempfile.mkdtemp(prefix="carsite-profile-"))
    os.environ.update(site_env(workdir), RECONSTRUCT_MODE="celery")
    try:
        return _profile(photos, args.dump)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _profile(photos: list[Path], dump: Path | None) -> int:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from reconstruct.registry.services import model_version_load_active
    from reconstruct.services import reconstructions
    from reconstruct.services.tokens import api_token_regenerate

    call_command("migrate", interactive=False, verbosity=0)
    user = get_user_model().objects.create_user("profile", "profile@localhost")
    token = api_token_regenerate(user)
    queued: list[int] = []
    # The queue is Redis's business: here a job is remembered and run below, as a worker would.
    reconstructions.reconstruction_dispatch = queued.append  # type: ignore[assignment]
    model_version_load_active()  # the model loaded once, as in a warm worker
    api = Client(HTTP_AUTHORIZATION=f"Token {token}", HTTP_ACCEPT="application/json", SERVER_NAME="127.0.0.1")
    browser = Client(SERVER_NAME="127.0.0.1")
    browser.force_login(user)

    parts = {part: cProfile.Profile(time.process_time) for part in STAGES}
    names = list(STAGES)

    def timed(part: str, call, *a, **kw):
        profile = parts[part]
        profile.enable()
        try:
            return call(*a, **kw)
        finally:
            profile.disable()

    plain = dict.fromkeys(STAGES, 0.0)

    def clocked(part: str, call, *a, **kw):
        started = time.process_time()
        try:
            return call(*a, **kw)
        finally:
            plain[part] += time.process_time() - started

    # One warm-up round (imports, template loading, first queries), the profiled rounds, then the same rounds
    # again without the profiler (its overhead per Python call inflates Django's share): the true totals.
    rounds = [(photos[0], clocked), *((p, timed) for p in photos), *((p, clocked) for p in photos)]
    for index, (photo, run) in enumerate(rounds):
        if index == 1:
            plain = dict.fromkeys(STAGES, 0.0)
        with photo.open("rb") as handle:
            response = run(names[0], api.post, "/api/reconstructions/", {"image": handle})
        assert response.status_code == 202, response.content
        item = response.json()
        run(names[1], reconstructions.reconstruction_run, queued.pop())
        status = run(names[2], api.get, item["status_url"])
        assert status.json()["status"] == "done", status.content
        png = run(names[3], api.get, status.json()["images"]["reconstruction"])
        assert png.status_code == 200
        b"".join(png.streaming_content) if png.streaming else png.content
        assert run(names[4], browser.get, "/gallery/").status_code == 200
        assert run(names[5], browser.get, item["url"]).status_code == 200

    count = len(photos)
    report = {part: part_table(profile, part, count) for part, profile in parts.items()}
    for part, table in report.items():
        table["total without profiler"] = round(1000 * plain[part] / count, 2)
        print(f"\n{part}: {table['total']:.1f} ms of CPU per round ({table['total without profiler']:.1f} unprofiled)")
        for stage, ms in table.items():
            if not stage.startswith("total"):
                print(f"  {stage:<40} {ms:8.2f}")
        if dump:
            dump.mkdir(parents=True, exist_ok=True)
            parts[part].dump_stats(dump / (part.split(":")[0] + "-" + str(names.index(part)) + ".pstats"))
    total = sum(t["total without profiler"] for t in report.values())
    print(
        json.dumps({"photos": count, "unprofiled_total_ms": round(total, 1), "parts": report, "load": os.getloadavg()})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
