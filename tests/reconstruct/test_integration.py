"""End to end with real parts: the API queues a task in a real Redis, a separate Celery worker
process consumes it and stores its files through S3 over HTTP (moto's server), and the results
come back through presigned URLs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from ml import runtime
from reconstruct.models import ModelVersion, Reconstruction
from reconstruct.registry.services import model_version_activate, model_version_ensure_active, model_version_register
from reconstruct.services.reconstructions import reconstruction_create
from reconstruct.services.tokens import api_token_regenerate
from reconstruct.services.uploads import upload_prepare
from tests.support import S3Server, WorkerProcess, upload

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

API = "/api/reconstructions/"


@pytest.fixture
def queued(settings: Any, on_s3: S3Server, s3_worker: WorkerProcess) -> S3Server:
    settings.RECONSTRUCT_MODE = "celery"
    return on_s3


def post_photo(client: Client, token: str, content: bytes, name: str) -> dict[str, Any]:
    response = client.post(API, {"image": upload(content, name)}, HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 202, response.content
    assert response["Retry-After"] == "1"  # when to ask the status URL again
    return response.json()


def wait_until_finished(client: Client, token: str, status_url: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(status_url, HTTP_AUTHORIZATION=f"Token {token}").json()
        if data["status"] in ("done", "failed"):
            return data
        time.sleep(0.2)
    raise AssertionError(f"still {data['status']} after {timeout} s")


def test_it_reconstructs_in_a_worker_process_and_stores_on_s3(queued: S3Server, s3_worker, alice, car_jpeg: bytes):
    client = Client()
    token = api_token_regenerate(alice)
    accepted = post_photo(client, token, car_jpeg, "blue car.jpg")
    data = wait_until_finished(client, token, accepted["status_url"])

    assert data["status"] == "done", data["error"]
    assert data["scores"]["psnr"] > 5
    # The separate worker process ran it (this process has no worker).
    assert "reconstruction_run_task" in s3_worker.log() and "succeeded" in s3_worker.log()
    prefix = f"reconstructions/{alice.pk}/{data['id']}/"
    assert queued.keys(prefix) == [
        prefix + name for name in ("model_input.png", "original.jpg", "reconstruction.png", "thumbnail.jpg")
    ]

    # Private objects are handed out through short-lived presigned URLs.
    redirect = client.get(data["images"]["reconstruction"], HTTP_AUTHORIZATION=f"Token {token}")
    assert redirect.status_code == 302
    location = redirect["Location"]
    assert location.startswith(f"{queued.endpoint_url}/{queued.bucket}/{prefix}reconstruction.png?")
    assert "X-Amz-Signature=" in location
    with urllib.request.urlopen(location) as response:
        assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
    download = client.get(data["images"]["reconstruction"] + "?download=1", HTTP_AUTHORIZATION=f"Token {token}")
    with urllib.request.urlopen(download["Location"]) as response:
        assert response.headers["Content-Disposition"] == 'attachment; filename="blue car-reconstruction.png"'

    assert client.delete(f"{API}{data['id']}/", HTTP_AUTHORIZATION=f"Token {token}").status_code == 204
    assert queued.keys(prefix) == []
    assert not Reconstruction.objects.exists()


def test_an_upload_can_wait_for_its_result_in_one_request(queued: S3Server, alice, car_jpeg: bytes) -> None:
    """``POST ?wait=`` answers when the worker's notice arrives: 201 with the result, no status request."""
    client = Client()
    token = api_token_regenerate(alice)
    started = time.monotonic()
    response = client.post(
        f"{API}?wait=25", {"image": upload(car_jpeg, "car.jpg")}, HTTP_AUTHORIZATION=f"Token {token}"
    )
    assert response.status_code == 201 and "Retry-After" not in response, response.content
    data = response.json()
    assert data["status"] == "done" and data["scores"]["psnr"] > 5
    assert data["queued_at"] >= data["created_at"]  # handed to the queue (ISO 8601 in UTC sorts as text)
    assert response["Location"].endswith(f"{API}{data['id']}/")
    assert time.monotonic() - started < 20  # ended by the notice, not by the 25 s
    refused = client.post(
        f"{API}?wait=soon", {"image": upload(car_jpeg, "car.jpg")}, HTTP_AUTHORIZATION=f"Token {token}"
    )
    assert refused.status_code == 400 and "wait must be a number of seconds" in refused.json()["error"]
    assert Reconstruction.objects.count() == 1  # the refused one was not kept


def test_the_upload_form_goes_straight_to_the_finished_page_when_the_job_is_quick(
    settings: Any, queued: S3Server, alice, car_jpeg: bytes
) -> None:
    """The form waits RECONSTRUCT_UPLOAD_WAIT s for the worker; a job done by then needs no progress page."""
    client = Client()
    client.force_login(alice)
    settings.RECONSTRUCT_UPLOAD_WAIT = 25
    response = client.post(reverse("reconstruct:upload"), {"image": upload(car_jpeg, "quick.jpg")})
    assert response.status_code == 302
    assert Reconstruction.objects.get(original_name="quick.jpg").status == Reconstruction.Status.DONE
    page = client.get(response["Location"]).content.decode()
    assert 'id="progress"' not in page and "The reconstruction" in page
    settings.RECONSTRUCT_UPLOAD_WAIT = 0  # never waits: the progress page, as before
    response = client.post(reverse("reconstruct:upload"), {"image": upload(car_jpeg, "slow.jpg")})
    assert Reconstruction.objects.get(original_name="slow.jpg").status in ("pending", "running")
    assert 'id="progress"' in client.get(response["Location"]).content.decode()
    slow = Reconstruction.objects.get(original_name="slow.jpg")
    assert wait_until_finished(client, api_token_regenerate(alice), f"{API}{slow.uuid}/")["status"] == "done"


def test_it_fails_readably_in_the_worker_for_an_unusable_stored_photo(queued: S3Server, alice, car_png: bytes):
    # Stored bytes that no longer decode (a damaged object): the worker must fail the row, not hang it.
    broken = dataclasses.replace(upload_prepare(upload(car_png)), content=b"not a png any more")
    reconstruction = reconstruction_create(user=alice, upload=broken)
    client = Client()
    token = api_token_regenerate(alice)
    data = wait_until_finished(client, token, f"{API}{reconstruction.uuid}/")
    assert data["status"] == "failed"
    assert data["error"].startswith("This file is text, not a photo. Please use a photo saved as JPEG, PNG")


def test_it_switches_every_worker_to_a_newly_activated_model(queued: S3Server, alice, car_png: bytes, tmp_path: Path):
    client = Client()
    token = api_token_regenerate(alice)
    first = wait_until_finished(client, token, post_photo(client, token, car_png, "a.png")["status_url"])
    assert first["model_version"] == model_version_ensure_active().name

    # A "new" model: the shipped files under another version name, registered into S3 and activated.
    directory = tmp_path / "retrained"
    shutil.copytree(runtime.DEFAULT_MODEL_DIR, directory)
    metadata = json.loads((directory / "metadata.json").read_text())
    metadata["version"] = "retrained-for-test"
    (directory / "metadata.json").write_text(json.dumps(metadata))
    version = model_version_register(model_dir=directory, source=ModelVersion.Source.TRAINED)
    assert queued.keys(f"models/{version.name}/")
    model_version_activate(version=version, user=alice)

    second = wait_until_finished(client, token, post_photo(client, token, car_png, "b.png")["status_url"])
    assert second["model_version"] == "retrained-for-test"
