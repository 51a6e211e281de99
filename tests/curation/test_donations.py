from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from reconstruct.curation.models import DatasetImage
from reconstruct.models import Reconstruction

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished(alice, active_model, draw) -> Reconstruction:
    key = default_storage.save("reconstructions/test/original.jpg", ContentFile(draw(42)))
    return Reconstruction.objects.create(
        owner=alice,
        status="done",
        original=key,
        original_name="my car.jpg",
        width=256,
        height=110,
        model_version=active_model,
        psnr=20.0,
        kl=30.0,
    )


def test_it_lets_the_owner_offer_a_photo_once(client, alice, finished) -> None:
    client.force_login(alice)
    page = client.get(reverse("reconstruct:detail", args=[finished.uuid])).content.decode()
    assert "Offer this photo to the training set" in page
    url = reverse("curation:donate", args=[finished.uuid])
    response = client.post(url, follow=True)
    image = DatasetImage.objects.get()
    assert (image.source, image.status, image.added_by, image.reconstruction) == ("donated", "pending", alice, finished)
    assert image.car_likeness is not None and image.original_name == "my car.jpg"
    assert "Thank you" in response.content.decode()
    assert "You offered this photo" in response.content.decode()
    client.post(url)
    assert DatasetImage.objects.count() == 1  # idempotent per reconstruction


def test_it_hides_alices_photo_from_bob(client, bob, finished) -> None:
    client.force_login(bob)
    assert client.post(reverse("curation:donate", args=[finished.uuid])).status_code == 404
    assert not DatasetImage.objects.exists()


def test_it_accepts_offers_only_by_post_from_signed_in_users(client, alice, finished) -> None:
    url = reverse("curation:donate", args=[finished.uuid])
    assert client.post(url).status_code == 302  # to the login page
    client.force_login(alice)
    assert client.get(url).status_code == 405
    assert not DatasetImage.objects.exists()
