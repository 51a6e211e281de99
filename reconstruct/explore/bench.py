"""How fast the latent-space features answer, measured end to end on loopback (``make bench-explore``).

    python -m reconstruct.explore.bench [--moves 60] [--requests 200]

Sets up a throwaway site (SQLite and media in a temporary folder, sync mode, the shipped model), starts
the web server as ``make run`` does (Granian, one process of 4 threads) on a free loopback port,
and measures:

- the slider round trip in Chromium: from a slider's ``input`` event to the new picture's ``load``
  event (static/js/sliders.js records it), ``--moves`` moves, one at a time;
- the same request without a browser (``GET /r/<id>/edit.png?offsets=...``, one keep-alive connection);
- the morph: strip (8 frames), animated WebP and GIF over HTTP, and the frames' decoding in-process;
- the decoder alone (one latent) for reference, and the CPU time the web server spends per slider
  request (the machine's load stretches wall-clock times far more than CPU times).

Prints the machine's load average before and after, and the numbers as one JSON line last.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from itertools import permutations
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "bench-password-123"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
        "min_ms": round(ordered[0], 2),
    }


def _timed_get(connection: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> tuple[float, bytes]:
    started = time.perf_counter()
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    return elapsed, body


def _wait_for_server(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the web server did not listen on port {port} within {timeout:.0f} s")


def _setup(folder: Path) -> dict[str, Any]:
    """Migrate a fresh database, create a user with one finished reconstruction; returns ids and keys."""
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile

    from reconstruct import examples
    from reconstruct.services.reconstructions import reconstruction_create
    from reconstruct.services.tokens import api_token_regenerate

    user = get_user_model().objects.create_user("bench", "bench@example.com", PASSWORD)
    # The home page's three drawings in two colours each: 6 cars, 30 ordered pairs for uncached morphs.
    drawings = [*examples.EXAMPLES, *(replace(d, body=d.body[::-1]) for d in examples.EXAMPLES)]
    made = []
    for i, drawing in enumerate(drawings):
        png = io.BytesIO()
        examples.draw_car(drawing).save(png, "PNG")
        made.append(reconstruction_create(user=user, upload=SimpleUploadedFile(f"car{i}.png", png.getvalue())))
    failed = [r.error for r in made if r.status != "done"]
    if failed:
        raise RuntimeError(f"the reconstructions failed: {failed}")
    return {"ids": [str(r.uuid) for r in made], "first": str(made[0].uuid), "token": api_token_regenerate(user)}


def _in_process(ids: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Decoding, a slider move and a morph's frames without HTTP (the same services the views call)."""
    import numpy as np

    from reconstruct.explore import services
    from reconstruct.models import Reconstruction

    cars = {str(r.uuid): r for r in Reconstruction.objects.filter(uuid__in=ids["ids"])}
    first = cars[ids["first"]]
    space = services.latent_space_active()
    z = np.asarray(first.latent, np.float32)
    decode, edit, morph = [], [], []
    cpu_started = time.process_time()
    for i in range(repeats):
        started = time.perf_counter()
        space.model.decode_array(z[None])
        decode.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        services.image_png(services.reconstruction_edit_image(first, [0.1 * (i % 30), -1.0, 0.5]))
        edit.append((time.perf_counter() - started) * 1000)
    cpu_per_pair_ms = (time.process_time() - cpu_started) * 1000 / repeats
    for a, b in permutations(ids["ids"], 2):
        services._morph_cache.clear()  # a first view: decode every frame
        started = time.perf_counter()
        services.morph_frames(cars[a], cars[b], services.MORPH_STEPS, "slerp")
        morph.append((time.perf_counter() - started) * 1000)
    return {
        "decode_one_latent": _summary(decode),
        "slider_service_with_png": _summary(edit),
        "morph_frames_8_uncached": _summary(morph),
        # CPU time, which the machine's load stretches far less than the wall clock.
        "cpu_ms_decode_plus_slider_service": round(cpu_per_pair_ms, 2),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants so far (Linux /proc), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
        for child in (task / "children").read_text().split():
            total += _cpu_seconds(int(child))
    return total


def _over_http(port: int, ids: dict[str, Any], requests: int, server_pid: int) -> dict[str, Any]:
    headers = {"Authorization": f"Token {ids['token']}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    edit = []
    cpu_before = _cpu_seconds(server_pid)
    for i in range(requests):
        offsets = f"{(i % 40) / 10 - 2:.1f},{(i % 7) / 3:.1f},-1.0"
        edit.append(_timed_get(connection, f"/r/{ids['first']}/edit.png?offsets={offsets}", headers)[0])
    server_cpu_ms = (_cpu_seconds(server_pid) - cpu_before) * 1000 / requests
    # A first view of a morph page: its strip (decodes the 8 frames) then its animation (frames cached), for
    # each ordered pair of cars once; then the GIF download of the same pair.
    strip, webp, gif, page = [], [], [], []
    for a, b in permutations(ids["ids"], 2):
        base = f"/morph/{a}/{b}/"
        strip.append(_timed_get(connection, f"{base}strip.png?steps=8&method=slerp", headers)[0])
        webp.append(_timed_get(connection, f"{base}morph.webp?steps=8&method=slerp", headers)[0])
        gif.append(_timed_get(connection, f"{base}morph.gif?steps=8&method=slerp", headers)[0])
        page.append(strip[-1] + webp[-1])
    morph = {
        "strip_png_first_view": _summary(strip),
        "webp_after_strip": _summary(webp),
        "gif_after_strip": _summary(gif),
        "strip_plus_webp": _summary(page),
    }
    connection.close()
    return {
        "slider_request": _summary(edit),
        "server_cpu_ms_per_slider_request": round(server_cpu_ms, 2),
        "morph_files_8_frames": morph,
    }


def _in_browser(port: int, ids: dict[str, Any], moves: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page()
        page.goto(f"{base}/accounts/login/")
        page.fill("#id_username", "bench")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        page.goto(f"{base}/r/{ids['first']}/")
        page.wait_for_selector("#sliders")
        samples = []
        for i in range(moves):
            value = f"{((i * 7) % 80) / 10 - 4:.1f}"  # 60 different positions: none served from the cache
            page.evaluate(
                """([value]) => { const s = document.querySelector('input[name=direction-1]');
                   s.value = value; s.dispatchEvent(new Event('input', {bubbles: true})); }""",
                [value],
            )
            # A function with an argument, not an expression string: the site's CSP forbids eval.
            page.wait_for_function("(n) => document.getElementById('sliders').dataset.updates === n", arg=str(i + 1))
            samples.append(float(page.get_attribute("#sliders", "data-last-ms")))
        browser.close()
    return {"slider_round_trip_browser": _summary(samples)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconstruct.explore.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=60, help="slider moves in Chromium")
    parser.add_argument("--requests", type=int, default=200, help="slider requests without a browser")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-explore-") as tmp:
        folder = Path(tmp)
        env = {
            "DJANGO_SETTINGS_MODULE": "carsite.settings",
            "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
            "MEDIA_ROOT": str(folder / "media"),
            "MODEL_CACHE_DIR": str(folder / "models"),
            "RECONSTRUCT_MODE": "sync",
            "CARSITE_ORT_THREADS": "1",
        }
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        ids = _setup(folder)
        results: dict[str, Any] = {"in_process": _in_process(ids, args.requests)}
        port = _free_port()
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "granian", "--interface", "wsgi", "--no-ws", "--host", "127.0.0.1"),
                *("--port", str(port), "--workers", "1", "--blocking-threads", "4", "--log-level", "warning"),
                "carsite.wsgi:application",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
        )
        try:
            _wait_for_server(port)
            results["http"] = _over_http(port, ids, args.requests, server.pid)
            results["browser"] = _in_browser(port, ids, args.moves)
        finally:
            server.terminate()
            server.wait(timeout=30)
    results["load_average"] = {"before": [round(v, 2) for v in load_before], "after": list(os.getloadavg())}
    results["cpus"] = os.cpu_count()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
