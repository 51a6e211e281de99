"""In headless Chromium at a phone's width (390 px): no page of the site scrolls sideways, the header's links
share one line, and a long file name is shortened with an ellipsis in the gallery."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from reconstruct.services.reconstructions import reconstruction_create
from tests.support import make_user, upload

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
# A phone's file name: one long word, the worst case for a heading.
LONG_NAME = "a_very_long_file_name_from_a_phone_camera_IMG_20261130_114512345_HDR.png"
# The page's width in CSS pixels against the window's, and the elements that reach past the window's right edge.
OVERFLOW = """() => ({
  width: document.documentElement.scrollWidth,
  offenders: [...document.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5 && !e.closest('pre'))
    .slice(0, 3).map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')),
})"""


# The header's visible links (one hidden on a phone has no box).
HEADER_TOPS = """[...document.querySelectorAll('.nav-links > *')].filter(e => e.getClientRects().length)
  .map(e => Math.round(e.getBoundingClientRect().top))"""


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(20_000)
    yield context
    context.close()


def _sideways(page: Any, url: str) -> str | None:
    """ "<url>: 442 px wide (h1, ...)" when the page at ``url`` is wider than the window, else None."""
    response = page.goto(url)
    assert response is not None and response.status < 500, url
    layout = page.evaluate(OVERFLOW)
    if layout["width"] <= PHONE["width"]:
        return None
    return f"{url}: {layout['width']} px wide ({', '.join(layout['offenders'])})"


def test_it_never_scrolls_sideways_on_a_phone(phone, live_server, alice, car_png: bytes) -> None:
    done = reconstruction_create(user=alice, upload=upload(car_png, LONG_NAME))
    assert done.status == "done"
    page = phone.new_page()
    base = live_server.url
    anonymous = ["/", "/accounts/login/", "/accounts/signup/", "/accounts/password_reset/", "/accounts/reset/MQ/x-y/"]
    problems = [_sideways(page, base + path) for path in [*anonymous, "/no-such-page/"]]

    client = Client()
    client.force_login(alice)
    phone.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}])
    signed_in = [
        "/",
        reverse("reconstruct:upload"),
        reverse("reconstruct:detail", args=[done.uuid]),
        reverse("reconstruct:gallery"),
        reverse("reconstruct:delete", args=[done.uuid]),
        reverse("account"),
        reverse("password_change"),
        reverse("explore:new_cars"),
        reverse("explore:morph_pick"),
        reverse("explore:map"),
    ]
    problems += [_sideways(page, base + path) for path in signed_in]
    assert [problem for problem in problems if problem] == []

    # The header: the brand, then every link on one line (Log out does not drop to a line of its own).
    page.goto(base + reverse("reconstruct:gallery"))
    tops = page.evaluate(HEADER_TOPS)
    assert len(tops) >= 4 and max(tops) - min(tops) < 4, tops
    # The gallery card shortens the long name with an ellipsis inside the card instead of clipping it.
    caption = page.locator(".thumb-caption").first
    assert caption.evaluate("e => getComputedStyle(e).textOverflow") == "ellipsis"
    assert caption.evaluate("e => e.scrollWidth > e.clientWidth")  # the name is longer than the card...
    assert LONG_NAME in caption.inner_text()  # ...and whole in the page, for search and screen readers
    # The same for the demo account's name and longer ones: the header shortens a name that does not fit.
    # The demo account `make run` prints is staff: its Admin link is on the account page on a phone, not in the header.
    for name in ("demo", "newd", "margaret_hamilton_1936"):
        other = Client()
        other.force_login(make_user(name, staff=name == "demo"))
        phone.add_cookies([{"name": "sessionid", "value": other.cookies["sessionid"].value, "url": base}])
        page.goto(base + reverse("reconstruct:gallery"))
        tops = page.evaluate(HEADER_TOPS)
        assert len(tops) == 5 and max(tops) - min(tops) < 4, (name, tops)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], name
        if name == "demo":
            page.goto(base + reverse("account"))
            assert page.get_by_role("link", name="Open the admin").is_visible()
    page.goto(base + reverse("account"))  # the whole name is still on the account page
    assert "margaret_hamilton_1936" in page.locator("main").inner_text()

    # The morph's strip of 8 frames keeps ~80 px a frame on a phone, scrolling inside its card, not the page.
    phone.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}])  # alice again
    other = reconstruction_create(user=alice, upload=upload(car_png, "other.png"))
    assert other.status == "done"
    morph = reverse("explore:morph", args=[done.uuid, other.uuid])
    # With more cars than fit on the screen, the morph picker's button stays in view.
    for index in range(4):
        assert reconstruction_create(user=alice, upload=upload(car_png, f"car {index}.png")).status == "done"
    page.goto(base + reverse("explore:morph_pick"))
    button = page.get_by_role("button", name="Morph").bounding_box()
    assert page.evaluate("document.documentElement.scrollHeight") > PHONE["height"]
    assert button is not None and button["y"] + button["height"] <= PHONE["height"]
    for steps in (8, 16):
        assert _sideways(page, f"{base}{morph}?steps={steps}") is None
        page.wait_for_function("() => document.getElementById('morph-strip').complete")
        assert page.evaluate("document.getElementById('morph-strip').getBoundingClientRect().width") / steps >= 75
        caption = page.evaluate("document.querySelector('.morph-strip figcaption').getBoundingClientRect().right")
        assert caption <= PHONE["width"]  # only the picture scrolls, the words stay in the window


def test_a_cards_age_follows_the_browsers_clock_not_the_cached_text(phone, live_server, alice, car_png) -> None:
    from datetime import timedelta

    from reconstruct.models import Reconstruction

    done = reconstruction_create(user=alice, upload=upload(car_png, "old car.png"))
    created = done.created_at - timedelta(hours=3)
    Reconstruction.objects.filter(pk=done.pk).update(created_at=created)
    client = Client()
    client.force_login(alice)
    assert "3\xa0hours ago" in client.get(reverse("reconstruct:gallery")).content.decode()  # now cached so
    phone.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
    page = phone.new_page()
    page.clock.set_fixed_time(created + timedelta(hours=5, minutes=10))
    page.goto(live_server.url + reverse("reconstruct:gallery"))
    assert page.locator(".thumb-caption time.ago").inner_text() == "5 hours ago"
