"""The simulated users of `make loadtest` (Locust, headless; started by ``python -m loadtest``).

Each user (signed in: an API token and a session cookie) loops: upload a real
car photo through the JSON API (``Authorization: Token``), wait for its result, fetch the reconstruction's
PNG, open the gallery. How it waits, ``LOADTEST_MODE``: ``upload-wait`` (the default: the upload request
itself waits, ``POST ?wait=``, one request), ``status-wait`` (the upload answers 202, then the status URL's
``?wait=`` long-poll) or ``poll`` (the status every 1 s, as the site worked before the long-poll).
Every upload's timing goes to ``LOADTEST_RESULTS`` (JSON) when Locust quits, with Locust's own request and
failure counts.

Environment (set by ``loadtest/__main__.py``): ``LOADTEST_ACCOUNTS`` (JSON file: username, API token,
session cookie per user), ``LOADTEST_IMAGES`` (a folder of photos), ``LOADTEST_RESULTS`` (where to write).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from pathlib import Path

from locust import FastHttpUser, constant, events, task
from urllib3 import encode_multipart_formdata

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
# Photos held in memory (drawn at random from the folder): the load generator must not wait on the disk.
PHOTO_SAMPLE = 300
WAIT_SECONDS = 20  # the long-poll's ?wait=
RESULT_DEADLINE = 120.0  # seconds after the upload: the client gives up (an error)

_accounts = json.loads(Path(os.environ["LOADTEST_ACCOUNTS"]).read_text())
_next_account = itertools.count()
_folder = Path(os.environ["LOADTEST_IMAGES"])
_paths = sorted(p for p in _folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
if not _paths:
    raise SystemExit(f"no photos (jpg, png, webp) in {_folder}")
_photos = [(p.name, p.read_bytes()) for p in random.Random(0).sample(_paths, min(PHOTO_SAMPLE, len(_paths)))]
MODES = ("upload-wait", "status-wait", "poll")
_mode = os.environ.get("LOADTEST_MODE", MODES[0])
if _mode not in MODES:
    raise SystemExit(f"LOADTEST_MODE must be one of {', '.join(MODES)}, not {_mode!r}")
_poll = _mode == "poll"
uploads: list[dict[str, object]] = []


class SiteUser(FastHttpUser):
    """One person: signs in, then uploads, waits for the result, looks at it and at the gallery, again."""

    wait_time = constant(0)
    connection_timeout = 10.0
    network_timeout = WAIT_SECONDS + 30.0

    def on_start(self) -> None:
        account = _accounts[next(_next_account) % len(_accounts)]
        self.token_header = {"Authorization": f"Token {account['token']}", "Accept": "application/json"}
        self.session_header = {"Cookie": account["cookie"]}  # signed in (made by loadtest/__main__.py)

    @task
    def upload_and_look(self) -> None:
        name, data = random.choice(_photos)
        body, content_type = encode_multipart_formdata({"image": (name, data)})
        started = time.time()
        record: dict[str, object] = {"started": started, "id": None, "status": "refused", "latency_s": None}
        uploads.append(record)
        upload_wait = _mode == "upload-wait"
        response = self.client.post(
            f"/api/reconstructions/?wait={WAIT_SECONDS}" if upload_wait else "/api/reconstructions/",
            data=body,
            headers={**self.token_header, "Content-Type": content_type},
            name="upload (API, wait)" if upload_wait else "upload (API)",
        )
        # 202: queued; 201: finished within the request (sync mode, or POST ?wait=)
        if response.status_code not in (201, 202):
            return
        item = response.json()
        record.update(id=item["id"], status=item["status"])
        while item["status"] not in ("done", "failed") and time.time() - started < RESULT_DEADLINE:
            if _poll:
                time.sleep(float(response.headers.get("Retry-After") or 1))
                response = self.client.get(item["status_url"], headers=self.token_header, name="status (poll)")
            else:
                url = f"{item['status_url']}?wait={WAIT_SECONDS}"
                asked = time.time()
                response = self.client.get(url, headers=self.token_header, name="status (wait)")
                if time.time() - asked < 1.0 and response.status_code == 200 and "Retry-After" in response.headers:
                    # Answered at once, unfinished: the server had no waiting place free (RECONSTRUCT_MAX_WAITING):
                    # poll as it says, as the result page does, instead of asking again at once.
                    time.sleep(float(response.headers["Retry-After"]))
            if response.status_code != 200:
                return
            item = response.json()
        record["status"] = item["status"]
        if item["status"] not in ("done", "failed"):
            events.request.fire(
                request_type="RESULT",
                name="result deadline",
                response_time=(time.time() - started) * 1000,
                response_length=0,
                exception=TimeoutError(f"no result {RESULT_DEADLINE:.0f} s after the upload"),
            )
            return
        record["latency_s"] = time.time() - started
        if item["status"] == "done":
            self.client.get(item["images"]["reconstruction"], headers=self.token_header, name="reconstruction PNG")
        with self.client.get(
            "/gallery/", headers=self.session_header, name="gallery", allow_redirects=False, catch_response=True
        ) as page:
            if page.status_code != 200:  # a redirect to the login form: the session is not signed in
                page.failure(f"gallery answered {page.status_code}")


@events.quitting.add_listener
def _write_results(environment, **kwargs) -> None:
    total = environment.stats.total
    errors = {f"{e.method} {e.name}: {e.error}": e.occurrences for e in environment.stats.errors.values()}
    summary = {"requests": total.num_requests, "errors": total.num_failures, "error_kinds": errors, "uploads": uploads}
    Path(os.environ["LOADTEST_RESULTS"]).write_text(json.dumps(summary))
