"""`make bench-browser`: how soon a reconstruction shows in Chromium after its upload completes (issue 12).

    python -m loadtest.browser [--uploads 20] [--images ../shared/data/cars]

Starts the real stack as ``make loadtest`` does (``manage.py runlocal`` in a temporary folder: Redis, the
Celery worker, Granian, on a free loopback port), signs one account in, and in headless Chromium (the
system's /usr/bin/chromium, driven by Playwright) uploads ``--uploads`` photos one after another through the
upload form, as a person would. For each it records, on the benchmark's clock:

- ``upload_s``: from the click on "Reconstruct" to the form POST's response (the upload is complete and
  stored, the job queued, and, when it finished within RECONSTRUCT_UPLOAD_WAIT, done; the browser then
  follows the redirect to the result page);
- ``visible_s``: from that response to the reconstruction's picture being loaded and shown on the result
  page (``complete`` and ``naturalWidth > 0``, checked every animation frame), whether the job finished
  before the page arrived or the page waited for it (``static/js/progress.js``: the ``?wait=`` long-poll,
  then one reload).

Prints the machine's load average before and after, then one JSON line last: ``uploads``, ``p50_visible_s``,
``p95_visible_s``, ``max_visible_s``, ``p50_upload_s``, ``p50_total_s`` and ``p95_total_s`` (click to
picture), ``reloads`` (result pages that had to wait and reload) and every upload's figures. A benchmark,
not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from loadtest import photos_in
from loadtest.__main__ import ROOT, Stack, accounts_create, free_port, load_average, percentile, warm_up

CHROMIUM = Path("/usr/bin/chromium")
PICTURE = "img[alt='The reconstruction']"
SHOWN = "sel => { const i = document.querySelector(sel); return !!i && i.complete && i.naturalWidth > 0; }"


def upload_and_watch(page, base_url: str, photo: Path, timeout_s: float) -> dict[str, object]:
    """One upload through the form; the times (s) described in the module docstring."""
    page.goto(f"{base_url}/reconstruct/")
    page.set_input_files("#id_image", str(photo))
    navigations: list[str] = []

    def navigated(frame) -> None:
        if frame == page.main_frame:
            navigations.append(frame.url)

    page.on("framenavigated", navigated)
    clicked = time.perf_counter()
    with page.expect_response(lambda r: r.request.method == "POST" and "/reconstruct/" in r.url) as posted:
        page.click("#submit")
    uploaded = time.perf_counter()
    if posted.value.status != 302:
        raise SystemExit(f"the upload of {photo.name} was answered {posted.value.status}, not a redirect")
    deadline = uploaded + timeout_s
    while True:
        try:
            left_ms = max(deadline - time.perf_counter(), 0.1) * 1000
            page.wait_for_function(SHOWN, arg=PICTURE, polling="raf", timeout=left_ms)
            break
        except Exception as error:  # the page reloaded itself while we watched: watch the new one
            if "context was destroyed" not in str(error) and "navigation" not in str(error).lower():
                raise
            if time.perf_counter() > deadline:
                raise
    shown = time.perf_counter()
    page.remove_listener("framenavigated", navigated)
    result_pages = [url for url in navigations if "/r/" in url]
    return {
        "photo": photo.name,
        "upload_s": round(uploaded - clicked, 3),
        "visible_s": round(shown - uploaded, 3),
        "reloaded": len(result_pages) > 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.browser", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/cars")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one result")
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        parser.error(f"no folder of photos at {args.images} (pass --images DIR)")
    if not CHROMIUM.exists():
        raise SystemExit("Chromium is not installed (apt-get install -y chromium; make test installs it)")
    photos = photos_in(args.images)
    photos = [photos[(index * 97) % len(photos)] for index in range(args.uploads)]

    workdir = Path(tempfile.mkdtemp(prefix="carsite-bench-browser-"))
    stack = Stack(workdir, free_port(), None, None)
    load_before = load_average()
    results: list[dict[str, object]] = []
    try:
        stack.start()
        os.environ.update(stack.env)
        import django

        django.setup()
        accounts = workdir / "accounts.json"
        accounts_create(1, accounts)
        warm_up(stack, args.images, accounts)
        # "sessionid=...; csrftoken=...": the browser's cookies, as loadtest/__main__.py made them.
        cookies = [part.strip().partition("=") for part in json.loads(accounts.read_text())[0]["cookie"].split(";")]

        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_cookies([{"name": name, "value": value, "url": stack.url} for name, _, value in cookies])
            page = context.new_page()
            upload_and_watch(page, stack.url, photos[0], args.timeout)  # warm: static files cached, as for a visitor
            for photo in photos:
                results.append(upload_and_watch(page, stack.url, photo, args.timeout))
                print(json.dumps(results[-1]), file=sys.stderr)
            browser.close()
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    visible = [float(r["visible_s"]) for r in results]
    uploads = [float(r["upload_s"]) for r in results]
    report = {
        "uploads": len(results),
        "p50_visible_s": round(percentile(visible, 0.5), 3),
        "p95_visible_s": round(percentile(visible, 0.95), 3),
        "max_visible_s": round(max(visible), 3),
        "p50_upload_s": round(percentile(uploads, 0.5), 3),
        # Click to picture: the figure a person feels, whatever part of the wait the form POST itself holds
        # (RECONSTRUCT_UPLOAD_WAIT: a quick job's page arrives finished).
        "p50_total_s": round(percentile([u + v for u, v in zip(uploads, visible, strict=True)], 0.5), 3),
        "p95_total_s": round(percentile([u + v for u, v in zip(uploads, visible, strict=True)], 0.95), 3),
        "reloads": sum(1 for r in results if r["reloaded"]),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
