"""Pages: home, accounts, upload, result, gallery, delete, account; nobody sees another's items."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.tokens import default_token_generator
from django.core import mail
from django.core.cache import caches
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from reconstruct.models import ApiToken, Reconstruction
from reconstruct.services.reconstructions import reconstruction_create
from reconstruct.services.tokens import api_token_authenticate, api_token_regenerate
from tests.support import PASSWORD, upload


@pytest.fixture
def alices(alice, car_png: bytes) -> Reconstruction:
    return reconstruction_create(user=alice, upload=upload(car_png, "alices-car.png"))


def test_it_invites_anonymous_visitors_to_sign_up(client, db) -> None:
    response = client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert reverse("signup") in body and "Sign up" in body
    assert body.count("/examples/") >= 3


def test_it_serves_robots_txt_that_keeps_crawlers_out_of_private_pages_but_not_shared_ones(client) -> None:
    response = client.get("/robots.txt")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    lines = response.content.decode().splitlines()
    rules = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Disallow")]
    assert {"/admin/", "/api/", "/r/", "/gallery/", "/accounts/"} <= set(rules)
    # Link previews of a shared result (/s/...) need its page and image.
    assert not any("/s/".startswith(rule) for rule in rules)


def test_it_serves_example_reconstructions_as_png(client, db) -> None:
    response = client.get(reverse("example_image", args=[0, "reconstruction"]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(reverse("example_image", args=[9, "input"])).status_code == 404


def test_it_signs_up_and_logs_in(client, db) -> None:
    response = client.post(
        reverse("signup"),
        {"username": "carol", "email": "carol@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302 and response["Location"] == reverse("reconstruct:upload")
    assert client.get(reverse("reconstruct:upload")).status_code == 200


def test_it_explains_a_bad_sign_up(client, db) -> None:
    response = client.post(
        reverse("signup"), {"username": "x", "email": "x@example.com", "password1": "a", "password2": "b"}
    )
    assert response.status_code == 200
    assert "password fields didn" in response.content.decode()


def test_sign_up_does_not_tell_whether_an_address_has_an_account(alice) -> None:
    def sign_up(username: str, email: str) -> Any:
        return Client().post(
            reverse("signup"), {"username": username, "email": email, "password1": PASSWORD, "password2": PASSWORD}
        )

    taken, free = sign_up("carol", "ALICE@example.com"), sign_up("dave", "dave@example.com")
    assert taken.status_code == free.status_code == 302 and taken["Location"] == free["Location"]
    # The address's owner learns of the new account; the new account's owner learns nothing from the page.
    assert [m.to for m in mail.outbox] == [["ALICE@example.com"]]
    assert "“carol”" in mail.outbox[0].body and "“alice”" in mail.outbox[0].body


def test_it_logs_in_and_out(client, alice) -> None:
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    # The address typed by hand asks (Django's view answered a blank 405) and does not log out by itself.
    page = client.get(reverse("logout"))
    assert page.status_code == 200 and "Log out?" in page.content.decode() and 'method="post"' in page.content.decode()
    assert "You are logged in as alice" in page.content.decode()
    assert client.get(reverse("reconstruct:gallery")).status_code == 200
    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("reconstruct:gallery")).status_code == 302


def test_it_emails_a_password_reset_link_that_works(client, alice) -> None:
    client.post(reverse("password_reset"), {"email": "alice@example.com"})
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/]+(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)
    form_url = client.get(link, follow=True).redirect_chain[-1][0]
    response = client.post(form_url, {"new_password1": "another-pass-4567", "new_password2": "another-pass-4567"})
    assert response.status_code == 302
    logged_in = client.post(reverse("login"), {"username": "alice", "password": "another-pass-4567"})
    assert logged_in.status_code == 302 and logged_in["Location"] == reverse("reconstruct:upload")


def test_it_changes_a_password(client, alice) -> None:
    client.force_login(alice)
    response = client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": "another-pass-4567", "new_password2": "another-pass-4567"},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("another-pass-4567")


def test_it_sends_anonymous_uploaders_to_log_in(client, db) -> None:
    response = client.get(reverse("reconstruct:upload"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_it_shows_a_phone_friendly_upload_form(client, alice) -> None:
    client.force_login(alice)
    body = client.get(reverse("reconstruct:upload")).content.decode()
    assert 'accept="image/*"' in body and 'enctype="multipart/form-data"' in body and 'capture="environment"' in body
    # It names every format it takes, not only the three it stores.
    assert "JPEG, PNG, WebP, GIF, TIFF, BMP" in body


def test_it_uploads_and_shows_the_result(client, alice, car_jpeg: bytes) -> None:
    client.force_login(alice)
    response = client.post(reverse("reconstruct:upload"), {"image": upload(car_jpeg, "blue.jpg")})
    reconstruction = Reconstruction.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("reconstruct:detail", args=[reconstruction.uuid])
    body = client.get(response["Location"]).content.decode()
    for kind in ("original", "model_input", "reconstruction"):
        assert reverse("reconstruct:file", args=[reconstruction.uuid, kind]) in body
    assert "What the model saw" in body and "PSNR" in body and "Download" in body


def test_it_explains_a_bad_upload(client, alice, not_an_image: bytes) -> None:
    client.force_login(alice)
    response = client.post(reverse("reconstruct:upload"), {"image": upload(not_an_image, "car.jpg")})
    assert response.status_code == 400
    assert (
        "This file is a PDF document, not a photo. Please use a photo saved as JPEG, PNG" in response.content.decode()
    )
    assert not Reconstruction.objects.exists()


def test_it_refuses_a_body_over_the_limit_with_413(client, alice, settings, car_png: bytes) -> None:
    settings.RECONSTRUCT_MAX_UPLOAD_BYTES = 1024
    client.force_login(alice)
    response = client.post(reverse("reconstruct:upload"), {"image": upload(car_png * 200)})
    assert response.status_code == 413
    assert "the limit is 1.0 KB" in response.content.decode()


def test_it_refuses_a_file_over_the_limit_with_413(client, alice, settings, car_png: bytes) -> None:
    settings.RECONSTRUCT_MAX_UPLOAD_BYTES = 200
    client.force_login(alice)
    response = client.post(reverse("reconstruct:upload"), {"image": upload(car_png)})
    assert response.status_code == 413
    assert "the limit is 200 bytes" in response.content.decode()


def test_it_shows_progress_while_the_job_waits(client, alice, settings, car_png: bytes) -> None:
    settings.RECONSTRUCT_MODE = "celery"
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    client.force_login(alice)
    url = reverse("reconstruct:detail", args=[reconstruction.uuid])
    # Not queued yet (here: the test's transaction never commits; live: Redis did not answer at upload).
    assert "Not in the queue yet" in client.get(url).content.decode()
    Reconstruction.objects.filter(pk=reconstruction.pk).update(queued_at=timezone.now())
    body = client.get(url).content.decode()
    assert "Waiting for a worker" in body and "Not in the queue yet" not in body
    assert f'data-status-url="{reverse("api:reconstruction", args=[reconstruction.uuid])}"' in body
    assert "progress.js" in body


def test_it_shows_why_a_reconstruction_failed(client, alices) -> None:
    Reconstruction.objects.filter(pk=alices.pk).update(status="failed", error="The worker exploded.")
    client.force_login(alices.owner)
    body = client.get(reverse("reconstruct:detail", args=[alices.uuid])).content.decode()
    assert "The worker exploded." in body and "Try again" in body


def test_it_serves_the_owner_her_files(client, alices) -> None:
    client.force_login(alices.owner)
    response = client.get(reverse("reconstruct:file", args=[alices.uuid, "reconstruction"]) + "?download=1")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert 'attachment; filename="alices-car-reconstruction.png"' in response["Content-Disposition"]
    assert b"".join(response.streaming_content)[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("reconstruct:detail", []),
        ("reconstruct:delete", []),
        ("reconstruct:file", ["original"]),
        ("reconstruct:file", ["reconstruction"]),
    ],
)
def test_it_hides_alices_cars_from_bob(client, alices, bob, name: str, args: list[str]) -> None:
    client.force_login(bob)
    assert client.get(reverse(name, args=[alices.uuid, *args])).status_code == 404


def test_it_does_not_let_bob_delete_or_retry_alices_car(client, alices, bob) -> None:
    client.force_login(bob)
    assert client.post(reverse("reconstruct:delete", args=[alices.uuid])).status_code == 404
    assert client.post(reverse("reconstruct:retry", args=[alices.uuid])).status_code == 404
    assert Reconstruction.objects.filter(pk=alices.pk).exists()
    assert "alices-car" not in client.get(reverse("reconstruct:gallery")).content.decode()


def test_it_lists_the_gallery_newest_first_in_pages(client, alice, car_png: bytes) -> None:
    for number in range(26):
        reconstruction_create(user=alice, upload=upload(car_png, f"car-{number:02}.png"))
    client.force_login(alice)
    first = client.get(reverse("reconstruct:gallery")).content.decode()
    assert first.index("car-25") < first.index("car-24")
    assert "car-01" not in first and "Page 1 of 2" in first
    second = client.get(reverse("reconstruct:gallery") + "?page=2").content.decode()
    assert "car-01" in second and "car-00" in second and "car-25" not in second


def test_the_cached_gallery_shows_a_finished_job_and_a_deletion_at_once(client, alice, car_png: bytes) -> None:
    # The grid is cached under its cards and their states: a change of either is never served stale.
    done = reconstruction_create(user=alice, upload=upload(car_png, "done-car.png"))
    waiting = Reconstruction.objects.create(owner=alice, original_name="waiting-car.png", original="x/original.png")
    client.force_login(alice)
    gallery = reverse("reconstruct:gallery")
    page = client.get(gallery).content.decode()
    assert "waiting-car.png" in page and "Waiting for a worker" in page
    Reconstruction.objects.filter(pk=waiting.pk).update(status=Reconstruction.Status.DONE, psnr=23.45)
    page = client.get(gallery).content.decode()
    assert "23.5 dB" in page and "Waiting for a worker" not in page
    Reconstruction.objects.filter(pk=done.pk).delete()
    assert "done-car.png" not in client.get(gallery).content.decode()


def _card_renders(monkeypatch: Any) -> list[str]:
    """The file names of the gallery cards rendered from now on (``presenters.cards_html``'s misses), in order."""
    from reconstruct import presenters

    rendered: list[str] = []
    real_render = presenters.render_to_string
    monkeypatch.setattr(
        presenters,
        "render_to_string",
        lambda name, context, request: (
            rendered.append(context["r"].original_name) or real_render(name, context, request)
        ),
    )
    return rendered


def test_a_new_card_renders_only_itself_the_others_come_from_one_cache_read(
    client, alice, car_png: bytes, monkeypatch: Any
) -> None:

    for number in range(3):
        Reconstruction.objects.create(owner=alice, original_name=f"old-{number}.png", original="x/original.png")
    client.force_login(alice)
    gallery = reverse("reconstruct:gallery")
    client.get(gallery)
    rendered = _card_renders(monkeypatch)
    reads: list[int] = []
    cards = caches["cards"]
    real_get_many = cards.get_many
    monkeypatch.setattr(cards, "get_many", lambda keys: reads.append(len(keys)) or real_get_many(keys))
    Reconstruction.objects.create(owner=alice, original_name="new.png", original="x/original.png")
    page = client.get(gallery).content.decode()
    assert rendered == ["new.png"] and reads == [4]
    assert [name for name in re.findall(r"(old-\d|new)\.png<br>", page)] == ["new", "old-2", "old-1", "old-0"]
    rendered.clear()
    reads.clear()
    again = client.get(gallery).content.decode()
    grid = re.compile(r'<div class="grid thumbs">.*?</a>\s*</div>', re.S)
    assert grid.search(again).group(0) == grid.search(page).group(0)
    assert rendered == [] and reads == []  # the whole grid was one cache read


def test_many_galleries_keep_their_cards_cached_when_each_gets_a_new_card(db, monkeypatch: Any) -> None:
    # 16 people with a full first page (24 cards each, 384 in all: more than Django's default cache of 300
    # entries held, with the grids beside them): after each gets one new upload, showing every gallery again
    # renders only the 16 new cards. With the default cache most cards had been pushed out and were rendered again.
    from django.contrib.auth import get_user_model

    people = [get_user_model().objects.create_user(f"viewer{index}") for index in range(16)]
    for person in people:
        Reconstruction.objects.bulk_create(
            Reconstruction(owner=person, original_name=f"old-{n}.png", original="x/original.png") for n in range(24)
        )
    gallery = reverse("reconstruct:gallery")
    clients = []
    for person in people:
        client = Client()
        client.force_login(person)
        assert client.get(gallery).status_code == 200
        clients.append(client)
    rendered = _card_renders(monkeypatch)
    for person in people:
        Reconstruction.objects.create(owner=person, original_name="new.png", original="x/original.png")
    for client in clients:
        page = client.get(gallery).content.decode()
        assert "new.png" in page and page.count('class="card thumb"') == 24
    assert rendered == ["new.png"] * len(people)


def test_it_deletes_after_confirmation(client, alices, django_capture_on_commit_callbacks) -> None:
    client.force_login(alices.owner)
    url = reverse("reconstruct:delete", args=[alices.uuid])
    assert "Delete this reconstruction?" in client.get(url).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url)
    assert response.status_code == 302 and response["Location"] == reverse("reconstruct:gallery")
    assert not Reconstruction.objects.exists()


def test_it_refuses_a_delete_by_get_without_confirmation(client, alices) -> None:
    client.force_login(alices.owner)
    client.get(reverse("reconstruct:delete", args=[alices.uuid]))
    assert Reconstruction.objects.filter(pk=alices.pk).exists()


def test_it_shows_a_new_api_token_once(client, alice) -> None:
    client.force_login(alice)
    response = client.post(reverse("account"), {"action": "regenerate"})
    assert response.status_code == 302
    first_view = client.get(reverse("account")).content.decode()
    key = re.search(r'<code class="token" id="token">(cs_[\w-]+)</code>', first_view).group(1)
    assert api_token_authenticate(key) == alice
    assert ApiToken.objects.get().key_hash != key  # only a hash is stored
    second_view = client.get(reverse("account")).content.decode()
    assert key not in second_view and key[:8] in second_view


def test_it_revokes_the_api_token(client, alice) -> None:
    key = api_token_regenerate(alice)
    client.force_login(alice)
    client.post(reverse("account"), {"action": "revoke"})
    assert api_token_authenticate(key) is None


def test_it_answers_unknown_pages_with_a_404_page(client, db) -> None:
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert "Page not found" in response.content.decode()


def _done(**fields) -> Reconstruction:
    values = {"status": Reconstruction.Status.DONE, "psnr": 19.0, "ssim": 0.5, "kl": 700.0, "width": 400, "height": 300}
    return Reconstruction(**(values | fields))


@pytest.mark.parametrize("likeness", [0.001, 0.3, 0.6, 0.95])
def test_it_words_the_car_check_by_what_the_search_decided(likeness: float) -> None:
    from reconstruct.presenters import car_check, explain_scores

    no_car = _done(car_likeness=likeness, frame=[0, 0, 400, 300], car_box=None)
    headline, verdict = car_check(no_car)
    assert headline == "No car found" and "recognisable" not in verdict and "looks like" not in verdict
    car = _done(car_likeness=likeness, frame=[40, 50, 360, 210], car_box=[40, 50, 360, 210])
    headline, verdict = car_check(car)
    assert headline == "A car" and "not a car" not in verdict and verdict.startswith("We found")
    assert ("looks like the car photos" in verdict) is (likeness >= 0.9)
    assert [s.value for s in explain_scores(car) if s.name == "Car check"] == ["A car"]
    # Results from before the search keep the old car-likeness words.
    assert car_check(_done(car_likeness=likeness)) is None
    assert [s.name for s in explain_scores(_done(car_likeness=likeness))][-1] == "Car-likeness"


def test_it_does_not_praise_the_closeness_of_a_photo_with_no_car() -> None:
    """A plain no-car picture reconstructs "well"; its PSNR is not compared with the model's average on cars."""
    from reconstruct.models import ModelVersion
    from reconstruct.presenters import explain_scores

    version = ModelVersion(name="v", metrics={"psnr": 18.9, "kl": 700.0})
    no_car = _done(psnr=22.0, car_likeness=0.004, frame=[0, 0, 400, 300], car_box=None, model_version=version)
    box = [40, 50, 360, 210]
    car = _done(psnr=22.0, car_likeness=0.99, frame=box, car_box=box, model_version=version)
    [closeness] = [s.verdict for s in explain_scores(no_car) if s.name == "Closeness (PSNR)"]
    assert "Better than usual" not in closeness and "not comparable" in closeness
    [closeness] = [s.verdict for s in explain_scores(car) if s.name == "Closeness (PSNR)"]
    assert closeness.startswith("Better than usual")


def test_it_draws_the_found_car_and_the_frame_on_the_photo(client, alice, alices) -> None:
    Reconstruction.objects.filter(pk=alices.pk).update(car_box=[10, 20, 110, 70], frame=[5, 15, 115, 75], mirrored=True)
    client.force_login(alice)
    body = client.get(reverse("reconstruct:detail", args=[alices.uuid])).content.decode()
    assert f'viewBox="0 0 {alices.width} {alices.height}"' in body
    assert 'class="box-rect" x="10" y="20" width="100" height="50"' in body
    assert 'class="frame-rect" x="5" y="15" width="110" height="60"' in body
    assert "the car we found" in body and "mirrored to face left" in body and "mirrored back" in body
    assert "We found no car in this photo" not in body
    Reconstruction.objects.filter(pk=alices.pk).update(
        car_box=None, frame=[0, 0, alices.width, alices.height], mirrored=False
    )
    body = client.get(reverse("reconstruct:detail", args=[alices.uuid])).content.decode()
    assert "box-rect" not in body and "no car found" in body and "the whole photo" in body
    # The offer to the training set says so too (a car the search missed may still be offered: staff review it).
    assert "We found no car in this photo. If there is one, you can still offer it" in body
    assert "<script>" not in body  # no inline script: the page's JavaScript lives in static files


def _reset_link(client: Client) -> str:
    client.post(reverse("password_reset"), {"email": "alice@example.com"})
    return re.search(r"https?://[^/]+(/accounts/reset/\S+/)", mail.outbox[-1].body).group(1)


def test_it_says_a_login_since_cancelled_the_reset_link_and_offers_a_new_one(client, alice) -> None:
    link = _reset_link(client)
    time.sleep(1)  # a token counts whole seconds: the login must come after it
    # A real login through the page (django-axes needs the request that Client.login does not give).
    assert client.post(reverse("login"), {"username": "alice", "password": PASSWORD}).status_code == 302
    page = client.get(link, follow=True).content.decode()
    assert "Your account was logged in after this link was sent" in page
    assert "(last login less than a minute ago)" in page  # not "0 minutes ago"
    assert "was used already or it expired" not in page
    assert f'href="{reverse("password_reset")}">Send me a new link</a>' in page


def test_it_says_a_reset_link_expired(client, alice, monkeypatch) -> None:
    link = _reset_link(client)
    four_days_later = datetime.now() + timedelta(days=4)
    monkeypatch.setattr(default_token_generator, "_now", lambda: four_days_later)  # how Django's tests age tokens
    page = client.get(link, follow=True).content.decode()
    assert "It expired: a link works for 3\xa0days after it is sent, and this one was sent 4\xa0days ago." in page


def test_it_says_a_used_reset_link_no_longer_works_because_the_password_changed(client, alice) -> None:
    link = _reset_link(client)
    form_url = client.get(link, follow=True).redirect_chain[-1][0]
    client.post(form_url, {"new_password1": "another-pass-4567", "new_password2": "another-pass-4567"})
    page = client.get(link, follow=True).content.decode()
    assert "its password was changed (perhaps with this very link)" in page


def test_it_says_a_cut_reset_link_is_incomplete(client, alice) -> None:
    uid = _reset_link(client).split("/")[-3]
    for path in (f"/accounts/reset/{uid}/c3v2/", "/accounts/reset/Mzk5/c3v2-1a2b3c/"):  # token cut; no such user
        assert "The link is incomplete" in client.get(path).content.decode()


def test_pages_say_how_many_numbers_the_active_model_uses(client, db) -> None:
    """The pages' "N numbers" follow the active model's latent size (a quick model trained in the admin may
    have 32), read once a minute per process."""
    from reconstruct import context_processors
    from reconstruct.models import ModelVersion

    ModelVersion.objects.update(is_active=False)
    ModelVersion.objects.create(name="small", source="trained", metadata={"model": {"latent_dim": 32}}, is_active=True)
    context_processors._latent_size.clear()
    body = client.get(reverse("home")).content.decode()
    assert "into just 32 numbers" in body and "128 numbers" not in body
    ModelVersion.objects.filter(name="small").update(metadata={"model": {"latent_dim": 64}})
    assert "into just 32 numbers" in client.get(reverse("home")).content.decode()  # within the minute
    context_processors._latent_size.clear()
    assert "into just 64 numbers" in client.get(reverse("home")).content.decode()
    context_processors._latent_size.clear()


def test_the_slider_card_says_how_many_numbers_the_car_has(client, alice, car_png) -> None:
    from reconstruct import context_processors

    context_processors._latent_size.clear()
    done = reconstruction_create(user=alice, upload=upload(car_png, "car.png"))
    client.force_login(alice)
    body = client.get(reverse("reconstruct:detail", args=[done.uuid])).content.decode()
    assert "Each slider moves this car's 128 numbers" in body


def test_the_upload_form_does_not_wait_for_a_job_queued_only_on_commit(settings, client, alice, car_png, monkeypatch):
    """Inside a transaction the job is queued when it commits: waiting for it could only run out the clock."""
    from reconstruct.services import waiting

    settings.RECONSTRUCT_MODE = "celery"
    settings.RECONSTRUCT_UPLOAD_WAIT = 20
    waited: list[float] = []
    monkeypatch.setattr(waiting, "reconstruction_wait", lambda reconstruction, timeout: waited.append(timeout))
    client.force_login(alice)
    response = client.post(reverse("reconstruct:upload"), {"image": upload(car_png, "car.png")})
    assert response.status_code == 302 and waited == []
