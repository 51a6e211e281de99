"""`make lambda-bench-upload`: how long an upload request takes on Lambda, warm and cold (issue 12). A benchmark,
not part of `make test` (pytest collects only test_*.py files; this one runs when named).

Everything is as in the Lambda tests (tests/lambda/conftest.py): the built bundle unzipped, zappa's own handler in
an isolated interpreter fed API Gateway events, PostgreSQL and S3 (moto's server) on loopback. A photo is a real
car from ``CARSITE_BENCH_IMAGES`` (default ../shared/data/cars) or, without that folder, a drawn one.

Wall-clock seconds (``*_s``) and the handler process's CPU seconds (``*_cpu_s``: steadier on a busy machine).

- **warm**: in one container (after migrate, a sign-up, a warm-up upload), ``UPLOADS`` (default 20) upload
  requests through the form (``POST /reconstruct/``: decode, store the original and thumbnail in S3, run the
  model in the request, store two PNGs, one row), each timed by the handler's own clock;
- **cold**: ``COLD`` (default 3) fresh containers whose FIRST request is an upload (with the session and CSRF
  cookie of the warm one): ``cold_request_s`` is that request (Django set-up, model download and load, the
  first reconstruction), ``cold_total_s`` adds the interpreter's start and the import of zappa's handler (what
  Lambda bills as its init phase), from process start to the response.

Prints one JSON line last with medians and every figure, and the machine's load average.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path

import pytest
from conftest import lambda_container_start, lambda_secrets
from lambda_helpers import STAGE, LambdaContainer
from test_lambda_handler import sign_up, upload

from tests.support import draw_car, encode, stop_by_closing_stdin

UPLOADS = int(os.environ.get("UPLOADS", "20"))
COLD = int(os.environ.get("COLD", "3"))
IMAGES = Path(os.environ.get("CARSITE_BENCH_IMAGES", Path(__file__).resolve().parents[3] / "shared/data/cars"))


def photos(count: int) -> list[tuple[str, bytes]]:
    if IMAGES.is_dir():
        files = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        return [(p.name, p.read_bytes()) for p in files[: count * 37 : 37]][:count]
    return [(f"drawn-{i}.jpg", encode(draw_car(seed=i), "JPEG")) for i in range(count)]


def timed_upload(container: LambdaContainer, name: str, data: bytes) -> tuple[float, float]:
    """The upload request's wall-clock and CPU seconds in the handler."""
    response = upload(container, name, "image/jpeg", data)
    assert response.status == 302, response.text[:1000]
    return response.seconds, container.cpu_seconds[-1]


def cold_upload(task_root, runtime_dir, s3, secrets, warm: LambdaContainer, name: str, data: bytes) -> dict:
    """A fresh container whose first request is an upload, with ``warm``'s cookies and CSRF token."""
    page = warm.get("/reconstruct/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    started = time.perf_counter()
    container, process = lambda_container_start(task_root, runtime_dir, s3, secrets)
    try:
        container.cookies = dict(warm.cookies)
        response = container.post_multipart(
            "/reconstruct/", {"csrfmiddlewaretoken": token}, {"image": (name, "image/jpeg", data)}
        )
        total = time.perf_counter() - started
        assert response.status == 302, response.text[:1000]
        return {
            "cold_request_s": round(response.seconds, 3),
            "cold_request_cpu_s": round(container.cpu_seconds[-1], 3),
            "cold_total_s": round(total, 3),
        }
    finally:
        stop_by_closing_stdin(process)


def test_upload_request_times(lambda_task_root, lambda_runtime_dir, lambda_s3, postgres_url) -> None:
    load_before = [round(x, 2) for x in os.getloadavg()]
    secrets = lambda_secrets(postgres_url)
    container, process = lambda_container_start(lambda_task_root, lambda_runtime_dir, lambda_s3, secrets)
    try:
        assert container.invoke({"manage": "migrate --noinput"}) == {}
        sign_up(container)
        pictures = photos(UPLOADS + COLD + 1)
        timed_upload(container, *pictures[0])  # warm-up: the model loaded, connections open
        timings = [timed_upload(container, *picture) for picture in pictures[1 : UPLOADS + 1]]
        warm, warm_cpu = [t[0] for t in timings], [t[1] for t in timings]
        cold = [
            cold_upload(lambda_task_root, lambda_runtime_dir, lambda_s3, secrets, container, *picture)
            for picture in pictures[UPLOADS + 1 :]
        ]
    finally:
        stop_by_closing_stdin(process)
    report = {
        "stage": STAGE,
        "uploads": len(warm),
        "warm_median_s": round(statistics.median(warm), 3),
        "warm_min_s": round(min(warm), 3),
        "warm_max_s": round(max(warm), 3),
        "warm_cpu_median_s": round(statistics.median(warm_cpu), 3),
        "cold_request_median_s": round(statistics.median(c["cold_request_s"] for c in cold), 3) if cold else None,
        "cold_request_cpu_median_s": round(statistics.median(c["cold_request_cpu_s"] for c in cold), 3)
        if cold
        else None,
        "cold_total_median_s": round(statistics.median(c["cold_total_s"] for c in cold), 3) if cold else None,
        "images": str(IMAGES) if IMAGES.is_dir() else "drawn",
        "warm_s": [round(s, 3) for s in warm],
        "cold": cold,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    print("\n" + json.dumps(report))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
