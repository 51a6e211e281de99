"""The hourly upload limit per account (RECONSTRUCT_UPLOADS_PER_HOUR): refused before the photo is read or
stored, with a clear message and Retry-After; a sliding hour; staff and a limit of 0 are not limited."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.db import connections
from django.test import Client
from django.utils import timezone

from reconstruct.models import Reconstruction, UploadRecord
from reconstruct.services.reconstructions import reconstruction_create
from reconstruct.services.tokens import api_token_regenerate
from reconstruct.services.uploads import UploadRateLimited, upload_records_prune
from tests.support import upload

LIST_URL = "/api/reconstructions/"


@pytest.fixture
def two_per_hour(settings):
    settings.RECONSTRUCT_UPLOADS_PER_HOUR = 2
    return settings


def stored_files(settings) -> list[Path]:
    return [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()]


def test_the_api_answers_429_with_retry_after_and_stores_nothing(client, two_per_hour, alice, car_png) -> None:
    auth = {"HTTP_AUTHORIZATION": f"Token {api_token_regenerate(alice)}"}
    for _ in range(2):
        assert client.post(LIST_URL, {"image": upload(car_png)}, **auth).status_code == 201
    files_before = stored_files(two_per_hour)
    response = client.post(LIST_URL, {"image": upload(car_png)}, **auth)
    assert response.status_code == 429
    body = response.json()
    assert body["code"] == "rate_limited" and "2 photos in the last hour" in body["error"]
    assert 3500 < int(response["Retry-After"]) <= 3601 and body["retry_after"] == int(response["Retry-After"])
    assert Reconstruction.objects.filter(owner=alice).count() == 2
    assert stored_files(two_per_hour) == files_before


def test_the_limit_is_a_sliding_hour(two_per_hour, alice, car_png) -> None:
    reconstruction_create(user=alice, upload=upload(car_png))
    first = UploadRecord.objects.get(user=alice)
    reconstruction_create(user=alice, upload=upload(car_png))
    UploadRecord.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(minutes=58))
    with pytest.raises(UploadRateLimited) as refused:
        reconstruction_create(user=alice, upload=upload(car_png))
    assert 60 < refused.value.retry_after <= 121 and "try again in 2 minutes" in refused.value.messages[0]
    UploadRecord.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(minutes=61))
    reconstruction_create(user=alice, upload=upload(car_png))  # the oldest left the window
    assert Reconstruction.objects.filter(owner=alice).count() == 3
    assert upload_records_prune() == 1 and UploadRecord.objects.filter(user=alice).count() == 2


def test_deleting_a_reconstruction_gives_no_upload_back(client, two_per_hour, alice, car_png) -> None:
    auth = {"HTTP_AUTHORIZATION": f"Token {api_token_regenerate(alice)}"}
    for _ in range(2):
        created = client.post(LIST_URL, {"image": upload(car_png)}, **auth)
        assert client.delete(f"{LIST_URL}{created.json()['id']}/", **auth).status_code == 204
    assert client.post(LIST_URL, {"image": upload(car_png)}, **auth).status_code == 429
    assert not Reconstruction.objects.exists()


def test_a_refused_photo_is_not_counted(two_per_hour, alice, car_png, not_an_image) -> None:
    for _ in range(3):
        with pytest.raises(ValidationError):
            reconstruction_create(user=alice, upload=upload(not_an_image))
    reconstruction_create(user=alice, upload=upload(car_png))
    assert UploadRecord.objects.filter(user=alice).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_limit_holds_for_parallel_uploads(settings, alice, car_png) -> None:
    # 40 clients at once, each sending one photo, against a limit of 5: exactly 5 get through.
    settings.RECONSTRUCT_UPLOADS_PER_HOUR = 5
    token = api_token_regenerate(alice)

    def send(_: int) -> int:
        try:
            return Client().post(LIST_URL, {"image": upload(car_png)}, HTTP_AUTHORIZATION=f"Token {token}").status_code
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=40) as pool:
        codes = list(pool.map(send, range(40)))
    assert sorted(set(codes)) == [201, 429] and codes.count(201) == 5
    assert Reconstruction.objects.filter(owner=alice).count() == UploadRecord.objects.filter(user=alice).count() == 5


def test_each_account_has_its_own_limit_and_staff_none(two_per_hour, alice, bob, car_png) -> None:
    for _ in range(2):
        reconstruction_create(user=alice, upload=upload(car_png))
    reconstruction_create(user=bob, upload=upload(car_png))
    alice.is_staff = True
    alice.save()
    reconstruction_create(user=alice, upload=upload(car_png))
    two_per_hour.RECONSTRUCT_UPLOADS_PER_HOUR = 0  # no limit
    bob.refresh_from_db()
    for _ in range(3):
        reconstruction_create(user=bob, upload=upload(car_png))


def test_the_upload_page_says_when_to_come_back(client, two_per_hour, alice, car_png) -> None:
    client.force_login(alice)
    for _ in range(2):
        assert client.post("/reconstruct/", {"image": upload(car_png)}).status_code == 302
    response = client.post("/reconstruct/", {"image": upload(car_png)})
    assert response.status_code == 429 and response["Retry-After"]
    assert "the most an account may" in response.content.decode()
    assert Reconstruction.objects.filter(owner=alice).count() == 2
