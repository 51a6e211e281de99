"""The JSON API: token and session authentication, CSRF only for sessions, JSON errors for everything."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from PIL import Image

from ml import framing
from reconstruct.models import Reconstruction
from reconstruct.registry.services import model_version_load_active
from reconstruct.services.reconstructions import reconstruction_create
from reconstruct.services.tokens import api_token_regenerate
from tests.support import draw_car, encode, upload

NOT_YOURS = {"error": "No such reconstruction.", "code": "not_found"}

LIST_URL = "/api/reconstructions/"


@pytest.fixture
def token(alice) -> str:
    return api_token_regenerate(alice)


def auth(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Token {key}"}


def test_manage_py_api_token_prints_a_token_that_replaces_the_old_one(client, alice, token: str) -> None:
    import io

    from django.core.management import CommandError, call_command

    out = io.StringIO()
    call_command("api_token", "alice", stdout=out)
    key = out.getvalue().strip()
    assert client.get(LIST_URL, **auth(key)).status_code == 200
    assert client.get(LIST_URL, **auth(token)).status_code == 401  # the account's previous token
    with pytest.raises(CommandError, match="No active account named 'nobody'"):
        call_command("api_token", "nobody")


def test_it_accepts_a_photo_with_202_and_a_status_url(client, settings, token: str, car_png: bytes) -> None:
    settings.RECONSTRUCT_MODE = "celery"  # queued after commit, which a test transaction never reaches
    response = client.post(LIST_URL, {"image": upload(car_png, "car.png")}, **auth(token))
    assert response.status_code == 202
    data = response.json()
    reconstruction = Reconstruction.objects.get()
    assert data["id"] == str(reconstruction.uuid) and data["status"] == "pending"
    assert data["status_url"] == f"http://testserver/api/reconstructions/{reconstruction.uuid}/"
    assert response["Location"] == data["status_url"]
    assert data["scores"] is None and data["images"]["reconstruction"] is None


def test_it_returns_the_finished_result_in_sync_mode(client, token: str, car_png: bytes) -> None:
    response = client.post(LIST_URL, {"image": upload(car_png)}, **auth(token))
    assert response.status_code == 201
    data = response.json()
    assert data["status"] == "done"
    assert set(data["scores"]) == {"mse", "psnr", "ssim", "kl", "car_likeness"}
    assert data["images"]["reconstruction"].endswith("/files/reconstruction")


@pytest.mark.django_db(transaction=True)  # BEGIN and COMMIT as in production, not the test's savepoints
def test_a_sync_upload_checks_the_limit_once_and_inserts_its_row_claimed(client, settings, token, car_png) -> None:
    """Each query is a round trip to the database from Lambda. The hourly limit is read once before the body (then
    once more under the lock that counts the upload), and the row is inserted running: no claim transaction. Before:
    15 queries (three reads of the limit, and BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT to claim the row)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.RECONSTRUCT_UPLOADS_PER_HOUR = 100
    client.post(LIST_URL, {"image": upload(car_png)}, **auth(token))  # the first registers the model, marks the token
    with CaptureQueriesContext(connection) as queries:
        response = client.post(LIST_URL, {"image": upload(car_png)}, **auth(token))
    assert response.status_code == 201 and response.json()["status"] == "done"
    sql = [query["sql"] for query in queries.captured_queries]
    assert sum(q.startswith("SELECT") and "reconstruct_uploadrecord" in q for q in sql) == 2, sql
    assert not any(q.startswith("UPDATE") and "SET \"status\" = 'running'" in q for q in sql), sql
    assert len(sql) == 10, sql
    assert Reconstruction.objects.get(uuid=response.json()["id"]).attempts == 1


def test_it_reports_status_scores_and_image_urls(client, token: str, alice, car_png: bytes) -> None:
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    data = client.get(f"{LIST_URL}{reconstruction.uuid}/", **auth(token)).json()
    assert data["status"] == "done" and data["scores"]["psnr"] == pytest.approx(reconstruction.psnr)
    assert data["model_version"] == reconstruction.model_version.name
    image = client.get(data["images"]["reconstruction"], **auth(token))
    assert image.status_code == 200 and image["Content-Type"] == "image/png"


def test_it_lists_only_the_callers_reconstructions(client, token: str, alice, bob, car_png: bytes) -> None:
    mine = reconstruction_create(user=alice, upload=upload(car_png, "mine.png"))
    reconstruction_create(user=bob, upload=upload(car_png, "bobs.png"))
    data = client.get(LIST_URL, **auth(token)).json()
    assert data["count"] == 1 and [item["id"] for item in data["results"]] == [str(mine.uuid)]


@pytest.mark.parametrize("page", ["2", "0", "abc"])
def test_it_answers_404_for_a_page_that_does_not_exist(client, token: str, page: str) -> None:
    response = client.get(f"{LIST_URL}?page={page}", **auth(token))
    assert response.status_code == 404 and "No such page" in response.json()["error"]


def test_it_answers_404_for_someone_elses_reconstruction(client, bob, alice, car_png: bytes) -> None:
    alices = reconstruction_create(user=alice, upload=upload(car_png))
    bobs_token = api_token_regenerate(bob)
    for method in (client.get, client.delete):
        response = method(f"{LIST_URL}{alices.uuid}/", **auth(bobs_token))
        assert (response.status_code, response.json()) == (404, NOT_YOURS)
    image = client.get(reverse("reconstruct:file", args=[alices.uuid, "original"]), **auth(bobs_token))
    assert image.status_code == 404
    assert Reconstruction.objects.filter(pk=alices.pk).exists()


def test_it_deletes_with_delete(client, token: str, alice, car_png: bytes) -> None:
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    assert client.delete(f"{LIST_URL}{reconstruction.uuid}/", **auth(token)).status_code == 204
    assert not Reconstruction.objects.exists()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Authentication required"),
        ({"HTTP_AUTHORIZATION": "Token cs_wrong"}, "not valid"),
        ({"HTTP_AUTHORIZATION": "Basic abc"}, "Malformed Authorization header"),
    ],
)
def test_it_refuses_missing_or_bad_credentials_with_401(client, db, headers: dict, message: str) -> None:
    response = client.get(LIST_URL, **headers)
    assert response.status_code == 401 and message in response.json()["error"]


def test_it_explains_a_bad_image_with_400(client, token: str, not_an_image: bytes) -> None:
    response = client.post(LIST_URL, {"image": upload(not_an_image, "car.jpg")}, **auth(token))
    assert response.status_code == 400
    assert response.json()["code"] == "not_an_image"
    assert not Reconstruction.objects.exists()


def test_it_explains_a_missing_image_field(client, token: str, car_png: bytes) -> None:
    response = client.post(LIST_URL, {"photo": upload(car_png)}, **auth(token))
    assert response.status_code == 400 and "field named 'image'" in response.json()["error"]


@pytest.mark.parametrize("limit", [200, 1024])  # the file over the limit / the whole body over it
def test_it_refuses_a_large_upload_with_413(client, settings, token: str, car_png: bytes, limit: int) -> None:
    settings.RECONSTRUCT_MAX_UPLOAD_BYTES = limit
    response = client.post(LIST_URL, {"image": upload(car_png * (1 if limit == 200 else 200))}, **auth(token))
    assert response.status_code == 413 and response.json()["code"] == "too_large"


def test_it_refuses_other_methods_with_405(client, token: str) -> None:
    response = client.put(LIST_URL, **auth(token))
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST" and "not allowed" in response.json()["error"]


def test_it_answers_unknown_api_paths_with_json_404(client, db) -> None:
    response = client.get("/api/nothing/here")
    assert response.status_code == 404 and "error" in response.json()


def test_it_checks_csrf_for_session_requests_only(alice, token: str, car_png: bytes) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert browser.get(LIST_URL).status_code == 200  # reading needs no CSRF token
    refused = browser.post(LIST_URL, {"image": upload(car_png)})
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    script = Client(enforce_csrf_checks=True)
    assert script.post(LIST_URL, {"image": upload(car_png)}, **auth(token)).status_code == 201


def test_it_accepts_session_posts_with_a_csrf_token(alice, car_png: bytes) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    browser.get(reverse("reconstruct:upload"))  # sets the csrftoken cookie
    csrf = browser.cookies["csrftoken"].value
    response = browser.post(LIST_URL, {"image": upload(car_png)}, HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 201


def test_it_returns_where_the_model_looked_as_the_framing_found_it(client, token: str, alice) -> None:

    scene = Image.new("RGB", (480, 320), (70, 110, 80))
    scene.paste(draw_car((240, 120)), (180, 150))
    photo = encode(scene, "PNG")
    reconstruction = reconstruction_create(user=alice, upload=upload(photo, "street.png"))
    data = client.get(f"{LIST_URL}{reconstruction.uuid}/", **auth(token)).json()
    expected = framing.photo_reconstruct(model_version_load_active()[1], photo)
    assert data["car_found"] is expected.car_found
    assert data["box"] == (expected.box.as_list() if expected.box else None)
    assert data["frame"] == expected.frame.as_list()
    assert data["facing"] == expected.facing and data["mirrored"] is expected.mirrored
    assert data["scores"]["car_likeness"] == pytest.approx(expected.car_likeness)
    left, top, right, bottom = data["frame"]
    assert 0 <= left < right <= 480 and 0 <= top < bottom <= 320
    if data["box"] is not None:  # the box lies inside the frame the model saw
        assert left <= data["box"][0] < data["box"][2] <= right and top <= data["box"][1] < data["box"][3] <= bottom


def test_it_tells_a_photo_without_a_car_that_no_car_was_found(client, token: str, alice) -> None:
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    reconstruction = reconstruction_create(user=alice, upload=upload(encode(noise, "PNG"), "noise.png"))
    data = client.get(f"{LIST_URL}{reconstruction.uuid}/", **auth(token)).json()
    assert data["status"] == "done" and data["car_found"] is False
    assert data["box"] is None and data["frame"] == [0, 0, 320, 240] and data["facing"] is None
    assert data["mirrored"] is False


def test_it_answers_an_image_url_without_credentials_with_a_json_401(client, alice, car_png: bytes) -> None:
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    url = reverse("reconstruct:file", args=[reconstruction.uuid, "reconstruction"])
    for accept in ("*/*", "application/json", "image/avif,image/webp,image/png,*/*;q=0.8"):  # curl, scripts, <img>
        response = client.get(url, HTTP_ACCEPT=accept)
        assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"
        assert response.json()["error"].startswith("Authentication required: send 'Authorization: Token <key>'")
    # A browser opening the link is sent to log in, and back to the picture afterwards.
    response = client.get(url, HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")
    assert response.status_code == 302 and response["Location"] == f"{reverse('login')}?next={url}"
