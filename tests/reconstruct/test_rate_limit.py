"""The hourly upload limit per account (RECONSTRUCT_UPLOADS_PER_HOUR): refused before the photo is read or
stored, with a clear message and Retry-After; a sliding hour; staff and a limit of 0 are not limited."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from reconstruct.models import Reconstruction
from reconstruct.services.reconstructions import reconstruction_create
from reconstruct.services.tokens import api_token_regenerate
from reconstruct.services.uploads import UploadRateLimited
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
    first = reconstruction_create(user=alice, upload=upload(car_png))
    reconstruction_create(user=alice, upload=upload(car_png))
    Reconstruction.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(minutes=58))
    with pytest.raises(UploadRateLimited) as refused:
        reconstruction_create(user=alice, upload=upload(car_png))
    assert 60 < refused.value.retry_after <= 121 and "try again in 2 minutes" in refused.value.messages[0]
    Reconstruction.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(minutes=61))
    reconstruction_create(user=alice, upload=upload(car_png))  # the oldest left the window
    assert Reconstruction.objects.filter(owner=alice).count() == 3


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
