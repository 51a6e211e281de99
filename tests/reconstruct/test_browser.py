"""In headless Chromium (Debian's package, driven by Playwright): sign up, upload a drawn car,
watch the result page fill in by itself, find the car in the gallery; another user gets 404s."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from reconstruct.services.reconstructions import reconstruction_create
from tests.support import PASSWORD, S3Server, draw_car, upload

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ALL_IMAGES_LOADED = "() => [...document.querySelectorAll('.compare img')].every(i => i.complete && i.naturalWidth > 0)"


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def stack(settings: Any, on_s3: S3Server, s3_worker: Any) -> S3Server:
    """The live server queues on Redis; the worker process stores on S3 (moto)."""
    settings.RECONSTRUCT_MODE = "celery"
    return on_s3


def log_in(page: Any, live_server: Any, username: str) -> None:
    """Log ``username`` in through the login form (every test user's password is PASSWORD)."""
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/reconstruct/$"))


def test_it_signs_up_uploads_a_car_and_finds_it_in_the_gallery(
    page, live_server, stack, settings: Any, tmp_path: Path
) -> None:
    photo = tmp_path / "my red car.jpg"
    draw_car((480, 240)).save(photo, quality=90)

    page.goto(live_server.url)
    page.get_by_role("link", name=re.compile("Sign up free")).click()
    page.fill("#id_username", "carol")
    page.fill("#id_email", "carol@example.com")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(re.compile(r"/reconstruct/$"))

    # The form does not wait for the worker here (RECONSTRUCT_UPLOAD_WAIT 0, as when a job takes longer than
    # it): the progress page and its long-poll, the path a slow job takes (a quick one: test_integration.py).
    settings.RECONSTRUCT_UPLOAD_WAIT = 0
    status_requests: list[str] = []
    page.on("request", lambda request: "/api/reconstructions/" in request.url and status_requests.append(request.url))
    page.set_input_files("#id_image", str(photo))
    expect(page.locator("#preview")).to_be_visible()  # the chosen photo is previewed before sending
    page.get_by_role("button", name="Reconstruct").click()
    page.wait_for_url(re.compile(r"/r/[0-9a-f-]{36}/$"))
    # The page waits on the status endpoint (a long-poll) and shows the result without a manual reload.
    page.locator(".compare").wait_for(timeout=90_000)
    assert status_requests and all("?wait=" in url for url in status_requests), status_requests
    assert page.locator(".compare img").count() == 3
    # All three pictures arrive (through presigned S3 URLs) and decode.
    page.wait_for_function(ALL_IMAGES_LOADED)
    expect(page.get_by_text("Closeness (PSNR)")).to_be_visible()
    # The car check, and where the model looked: the found car's box drawn on the photo, or "no car found".
    expect(page.get_by_text("Car check")).to_be_visible()
    found = page.locator(".compare .overlay .box-rect")
    if found.count():
        box = found.bounding_box()
        photo = page.locator(".compare .located img").bounding_box()
        assert photo["x"] - 2 <= box["x"] and box["x"] + box["width"] <= photo["x"] + photo["width"] + 2
        expect(page.get_by_text("the car we found")).to_be_visible()
    else:
        expect(page.get_by_text("No car found", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("Download the reconstruction"))).to_be_visible()
    result_url = page.url

    page.get_by_role("link", name="Gallery").click()
    card = page.locator("a.card.thumb", has_text="my red car.jpg")
    assert card.count() == 1
    card.click()
    page.wait_for_url(result_url)


def test_it_shows_bob_a_404_for_alices_car(page, live_server, stack, settings, alice, bob, car_png: bytes) -> None:
    settings.RECONSTRUCT_MODE = "sync"
    alices = reconstruction_create(user=alice, upload=upload(car_png, "alices-secret-car.png"))

    log_in(page, live_server, "bob")

    for path in (f"/r/{alices.uuid}/", f"/r/{alices.uuid}/files/original", f"/r/{alices.uuid}/delete/"):
        response = page.goto(live_server.url + path)
        assert response.status == 404, path
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    page.goto(f"{live_server.url}/gallery/")
    expect(page.get_by_text("Nothing here yet")).to_be_visible()
    assert page.get_by_text("alices-secret-car").count() == 0


def test_a_display_p3_photo_shows_in_its_own_colours(page, live_server, settings, alice) -> None:
    """The stored original keeps a phone's Display P3 profile instead of being converted (reconstruct/images.py):
    Chromium applies it, so the car's body shows as the sRGB colour it was drawn in, not the file's own numbers."""
    import io

    import numpy as np
    from PIL import Image

    from tests import hostile

    settings.RECONSTRUCT_MODE = "sync"
    photo = hostile.p3_jpeg((640, 320))
    reconstruction = reconstruction_create(user=alice, upload=upload(photo, "phone-p3.jpg"))
    assert Image.open(io.BytesIO(photo)).info["icc_profile"]

    log_in(page, live_server, "alice")
    page.goto(f"{live_server.url}/r/{reconstruction.uuid}/")
    original = page.locator("figure a.located img").first
    expect(original).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=original.element_handle())
    shown = np.asarray(Image.open(io.BytesIO(original.screenshot())).convert("RGB"), dtype=np.float64)
    h, w = shown.shape[:2]
    body = shown[int(h * 0.45) : int(h * 0.56), int(w * 0.6) : int(w * 0.8)].mean((0, 1))
    assert max(abs(a - b) for a, b in zip(body, hostile.P3_BODY_SRGB, strict=True)) <= 6, body


def test_a_job_whose_worker_died_offers_to_queue_it_again_without_a_reload(page, live_server, stack, settings, alice):
    """A running job whose worker died: the page's long-poll ends the moment the job counts as stuck
    (RECONSTRUCT_STUCK_AFTER), and the page shows "Queue it again" by itself (it used to say "a few seconds" until
    reloaded by hand; a new user watched it for 3 minutes)."""
    from django.utils import timezone

    from reconstruct.models import Reconstruction

    settings.RECONSTRUCT_STUCK_AFTER = 4
    job = Reconstruction.objects.create(
        owner=alice, original_name="car.png", original="x/original.png", status="running", started_at=timezone.now()
    )
    log_in(page, live_server, "alice")
    page.goto(f"{live_server.url}/r/{job.uuid}/")
    expect(page.get_by_text("Reconstructing…")).to_be_visible()
    expect(page.get_by_text(re.compile(r"running the model on your photo \(\d+ s so far\)"))).to_be_visible()
    assert page.get_by_role("button", name="Queue it again").count() == 0
    expect(page.get_by_role("button", name="Queue it again")).to_be_visible(timeout=15_000)
    # Stuck, the page no longer says a worker is running it (the count used to run on under the warning).
    expect(page.get_by_role("heading", name="This is taking far too long")).to_be_visible()
    page.wait_for_timeout(1500)
    assert page.get_by_text("A worker is running").count() == 0
