"""In headless Chromium: drag the latent sliders and save the result, morph two cars (from the gallery and
from the map) and download the animation, open a seeded new-cars link twice, share a result and unshare it."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import expect

from reconstruct.models import Reconstruction
from reconstruct.services.reconstructions import reconstruction_create
from tests.support import PASSWORD, draw_car, encode, upload

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

IMAGES_LOADED = "sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)"


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(20_000)
    yield context
    context.close()


def log_in(context: Any, base_url: str, name: str) -> Any:
    page = context.new_page()
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", name)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/reconstruct/$"))
    return page


@pytest.fixture
def cars(alice) -> tuple[Reconstruction, Reconstruction]:
    red = reconstruction_create(user=alice, upload=upload(encode(draw_car(), "PNG"), "red car.png"))
    blue = reconstruction_create(user=alice, upload=upload(encode(draw_car(body=(30, 60, 200)), "PNG"), "blue car.png"))
    return red, blue


def test_it_moves_a_car_with_the_sliders_and_saves_it(context, live_server, cars) -> None:
    red, _ = cars
    page = log_in(context, live_server.url, "alice")
    page.goto(f"{live_server.url}/r/{red.uuid}/")
    sliders = page.locator("#sliders")
    expect(sliders.locator("input[type=range]")).to_have_count(8)
    page.locator("input[name=direction-1]").fill("2.5")
    page.locator("input[name=direction-3]").fill("-1.5")
    # The picture follows without a reload; the last request carries the latest values.
    expect(sliders).to_have_attribute("data-shown", "2.5,0.0,-1.5,0.0,0.0,0.0,0.0,0.0")
    page.wait_for_function(IMAGES_LOADED, arg="#slider-image")
    assert "offsets=2.5%2C0.0%2C-1.5" in page.locator("#slider-image").get_attribute("src")
    assert float(sliders.get_attribute("data-last-ms")) > 0
    expect(page.locator("#slider-timing")).to_have_text(re.compile(r"Updated in \d+ ms"))

    page.get_by_role("button", name="Save this car to my gallery").click()
    page.wait_for_url(re.compile(r"/r/[0-9a-f-]{36}/$"))
    assert str(red.uuid) not in page.url
    expect(page.get_by_text("Moved along the latent sliders")).to_be_visible()
    edited = Reconstruction.objects.get(origin="edited")
    assert edited.origin_detail["offsets"] == [2.5, 0.0, -1.5, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_it_morphs_two_cars_picked_in_the_gallery_or_on_the_map(context, live_server, cars) -> None:
    red, blue = cars
    page = log_in(context, live_server.url, "alice")
    page.goto(f"{live_server.url}/gallery/")
    page.get_by_role("link", name="Morph two cars").click()
    page.locator(f"input[value='{red.uuid}']").check()
    page.locator(f"input[value='{blue.uuid}']").check()
    page.get_by_role("button", name="Morph", exact=True).click()
    # Ticked in the gallery's order, newest first.
    page.wait_for_url(re.compile(rf"/morph/{blue.uuid}/{red.uuid}/"))
    page.wait_for_function(IMAGES_LOADED, arg="#morph-strip, #morph-animation")
    assert page.evaluate("document.getElementById('morph-strip').naturalWidth") == 8 * 128
    with page.expect_download() as download:
        page.locator("#download-webp").click()
    animation = Image.open(io.BytesIO(download.value.path().read_bytes()))
    assert animation.format == "WEBP" and animation.n_frames == 14
    permalink = page.locator("#permalink").get_attribute("href")

    page.goto(f"{live_server.url}/map/")
    points = page.locator(".car-map.placed .map-point")
    expect(points).to_have_count(2)
    page.locator(f".map-point[data-id='{red.uuid}']").click()
    expect(page.locator("#map-status")).to_contain_text("Click another car")
    page.locator(f".map-point[data-id='{blue.uuid}']").click()
    page.wait_for_url(re.compile(rf"/morph/{red.uuid}/{blue.uuid}/"))

    page.goto(permalink)
    page.wait_for_function(IMAGES_LOADED, arg="#morph-strip")
    assert page.evaluate("document.getElementById('morph-strip').naturalWidth") == 8 * 128


def test_it_shows_the_same_new_cars_for_a_seeded_link_and_keeps_one(context, live_server, alice) -> None:
    page = log_in(context, live_server.url, "alice")
    page.get_by_role("link", name="New cars").first.click()
    page.wait_for_url(re.compile(r"/new-cars/\?seed=\d+&temperature=1\.0$"))
    link = page.url
    page.wait_for_function(IMAGES_LOADED, arg=".sample img")
    first = page.locator(".sample img").first.screenshot()
    page.goto(link)
    page.wait_for_function(IMAGES_LOADED, arg=".sample img")
    assert page.locator(".sample img").first.screenshot() == first
    page.get_by_role("button", name="Keep car 2").click()
    page.wait_for_url(re.compile(r"/r/[0-9a-f-]{36}/$"))
    expect(page.get_by_text("Sampled from the prior")).to_be_visible()
    page.goto(f"{live_server.url}/gallery/")
    expect(page.locator(".badge", has_text="Sampled")).to_have_count(1)


def test_it_shares_a_result_with_anyone_and_unshares_it(browser, context, live_server, cars, bob) -> None:
    red, blue = cars
    page = log_in(context, live_server.url, "alice")
    page.goto(f"{live_server.url}/r/{red.uuid}/")
    page.get_by_role("button", name="Make a public link").click()
    public_url = page.locator("#public-link").get_attribute("href")
    assert re.fullmatch(rf"{live_server.url}/s/[A-Za-z0-9_-]{{40,}}/", public_url)

    stranger = browser.new_context()
    bobs = browser.new_context()
    try:
        for viewer in (stranger.new_page(), log_in(bobs, live_server.url, "bob")):
            response = viewer.goto(public_url)
            assert response.status == 200
            viewer.wait_for_function(IMAGES_LOADED, arg=".compare img")
            text = viewer.content()
            assert "alice" not in text and "red car" not in text and str(blue.uuid) not in text
            assert viewer.locator("meta[property='og:image']").get_attribute("content").endswith("/thumbnail")
            expect(viewer.get_by_text("Closeness (PSNR)")).to_be_visible()

        page.get_by_role("button", name="Make private again").click()
        expect(page.get_by_text("Only you can see this result.")).to_be_visible()
        viewer = stranger.new_page()
        assert viewer.goto(public_url).status == 404
        assert viewer.goto(public_url + "reconstruction").status == 404
    finally:
        stranger.close()
        bobs.close()
