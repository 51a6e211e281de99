"""In headless Chromium: a photo over the per-request limit (AWS Lambda's) goes from the upload page straight to S3
(static/js/direct_upload.js with a presigned POST) and comes back reconstructed."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support import PASSWORD, S3Server

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_it_sends_a_photo_too_large_for_one_request_straight_to_s3(
    browser: Any, live_server: Any, on_s3: S3Server, settings: Any, alice: Any, tmp_path: Path
) -> None:
    settings.RECONSTRUCT_MODE = "sync"
    settings.RECONSTRUCT_DIRECT_UPLOADS = True
    settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES = 64 * 1024
    # What the README asks of the media bucket: the site's origin may POST to it.
    on_s3.client().put_bucket_cors(
        Bucket=on_s3.bucket,
        CORSConfiguration={
            "CORSRules": [{"AllowedOrigins": [live_server.url], "AllowedMethods": ["POST"], "AllowedHeaders": ["*"]}]
        },
    )
    photo = tmp_path / "big car.jpg"
    noise = Image.frombytes("RGB", (500, 400), os.urandom(500 * 400 * 3))
    noise.save(photo, quality=95)
    assert photo.stat().st_size > 2 * 64 * 1024  # over the limit plus the multipart allowance

    def incoming() -> set[str]:
        listing = on_s3.client().list_objects_v2(Bucket=on_s3.bucket, Prefix="incoming/")
        return {item["Key"] for item in listing.get("Contents", [])}

    before = incoming()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    try:
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("#id_username", "alice")
        page.fill("#id_password", PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/reconstruct/$"))

        page.set_input_files("#id_image", str(photo))
        page.get_by_role("button", name="Reconstruct").click()
        page.wait_for_url(re.compile(r"/r/[0-9a-f-]{36}/$"))
        page.locator(".compare").wait_for()
        assert page.locator(".compare img").count() == 3
    finally:
        context.close()

    # The photo went to S3, never to the site's upload form.
    assert any(url.startswith(on_s3.endpoint_url) for url in posts)
    assert not any(url.endswith("/reconstruct/") for url in posts)
    assert any(url.endswith("/complete/") for url in posts)
    assert incoming() == before  # the incoming copy is gone once stored as a reconstruction
    original = alice.reconstructions.get().original
    with original.open("rb") as handle:
        assert Image.open(io.BytesIO(handle.read())).size == (500, 400)
