"""In headless Chromium at 1280x900: every list of the admin shows all its columns and its row buttons
without scrolling sideways, with long names in it (a phone's file name, long version names)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from reconstruct.curation.models import DatasetImage, TrainingRun
from reconstruct.curation.services.arrival import dataset_image_add
from reconstruct.curation.services.export import dataset_snapshot_create
from reconstruct.curation.services.review import dataset_image_approve
from reconstruct.services.reconstructions import reconstruction_create
from reconstruct.services.tokens import api_token_regenerate
from tests.support import make_user, upload

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG_NAME = "a_rather_long_original_file_name_from_a_phone_IMG_20261130_114512345_HDR.jpg"
# Per list: the results box's visible and full width, and the row buttons whose right edge lies past the box's.
MEASURE = """() => {
  const box = document.querySelector('#changelist .results');
  if (!box) return null;
  const edge = box.getBoundingClientRect().right + 0.5;
  const hidden = [...box.querySelectorAll('button, a.button, input[type=submit]')]
    .filter(b => b.getBoundingClientRect().right > edge).map(b => b.textContent.trim());
  return {visible: box.clientWidth, full: box.scrollWidth, page: document.documentElement.scrollWidth, hidden};
}"""


def _signed_in_page(browser: Any, live_server: Any, user: Any) -> tuple[Any, Any]:
    """A 1280x900 browser context signed in as ``user``, and a page in it."""
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
    return context, context.new_page()


def test_every_admin_list_shows_its_buttons_at_1280_px(browser: Any, live_server, second_model, draw) -> None:
    staff = make_user("sam", staff=True)
    alice = make_user("alice")
    api_token_regenerate(alice)
    reconstruction_create(user=alice, upload=upload(draw(7), LONG_NAME))
    for seed in (1, 2):
        dataset_image_add(data=draw(seed), name=f"{seed}-{LONG_NAME}", source="bulk")
    dataset_image_approve(images=DatasetImage.objects.all(), user=staff)
    snapshot = dataset_snapshot_create(user=staff, note="the training photos of " + LONG_NAME)
    TrainingRun.objects.create(snapshot=snapshot, config_name="quick", config={}, epochs=20, created_by=staff)
    assert not second_model.is_active  # its row carries "Activate…" and "Compare with active"

    context, page = _signed_in_page(browser, live_server, staff)
    problems = {}
    lists = [reverse(f"admin:{m._meta.app_label}_{m._meta.model_name}_changelist") for m in admin.site._registry]
    for path in lists:
        assert page.goto(live_server.url + path).status == 200, path
        measured = page.evaluate(MEASURE)
        assert measured is not None or page.locator("#changelist").count() == 1, path
        if measured and (measured["full"] > measured["visible"] or measured["hidden"] or measured["page"] > 1280):
            problems[path] = measured
    context.close()
    assert problems == {}
    assert len(lists) >= 8  # users, groups, reconstructions, versions, activations, photos, snapshots, runs


def test_the_versions_lists_activate_button_opens_the_confirmation(browser: Any, live_server, second_model) -> None:
    """The row's "Activate…" button submits a small form of its own; it must not sit inside the list's form
    (a nested form is dropped by the HTML parser, and the button would do nothing)."""
    context, page = _signed_in_page(browser, live_server, make_user("sam", staff=True))
    page.goto(live_server.url + reverse("admin:reconstruct_modelversion_changelist"))
    with page.expect_navigation():
        page.get_by_role("button", name="Activate…").click()
    assert page.url == live_server.url + reverse("admin:reconstruct_modelversion_activate", args=[second_model.pk])
    assert page.locator("h1").inner_text() == f"Activate {second_model.name}?"
    second_model.refresh_from_db()
    assert not second_model.is_active  # only the confirmation's own button activates
    context.close()
