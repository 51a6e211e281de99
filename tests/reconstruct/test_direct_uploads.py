"""Direct-to-S3 uploads (reconstruct/direct_uploads.py): photos too large for one request through AWS Lambda."""

from __future__ import annotations

import io
import os
import urllib.request
import uuid
from typing import Any

import pytest
from PIL import Image

pytestmark = pytest.mark.django_db


def noise_png(side: int) -> bytes:
    """A picture that does not compress, so its size is predictable (about 3 bytes per pixel)."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def post_to_s3(ticket: dict[str, Any], data: bytes) -> int:
    """What the browser does with the presigned POST: the form's fields, then the file, as multipart."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in ticket["fields"].items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="car.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(
        ticket["url"],
        data=b"".join(parts),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def test_it_refuses_a_request_too_large_for_lambda_and_says_what_to_do(client: Any, alice: Any, settings: Any) -> None:
    settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES = 100 * 1024
    settings.RECONSTRUCT_DIRECT_UPLOADS = True
    client.force_login(alice)
    photo = noise_png(260)  # ~200 KB: over 100 KB plus the multipart allowance

    page = client.post("/reconstruct/", {"image": io.BytesIO(photo)})
    assert page.status_code == 413
    assert "AWS Lambda accepts at most 6 MB per request" in page.content.decode()

    api = client.post("/api/reconstructions/", {"image": io.BytesIO(photo)})
    assert api.status_code == 413
    assert api.json()["code"] == "too_large_for_lambda"


def test_it_leaves_requests_alone_where_they_are_not_capped(client: Any, alice: Any, car_png: bytes) -> None:
    client.force_login(alice)
    response = client.post("/reconstruct/", {"image": io.BytesIO(car_png)})
    assert response.status_code == 302


def test_it_reconstructs_a_photo_posted_straight_to_s3(
    client: Any, alice: Any, on_s3: Any, settings: Any, car_png: bytes
) -> None:
    settings.RECONSTRUCT_DIRECT_UPLOADS = True
    client.force_login(alice)
    presigned = client.post("/api/uploads/")
    assert presigned.status_code == 201
    ticket = presigned.json()
    assert ticket["fields"]["key"] == f"incoming/{alice.pk}/{ticket['upload_id']}"
    assert post_to_s3(ticket, car_png) in (200, 201, 204)

    completed = client.post(ticket["complete_url"], {"name": "my car.png"}, content_type="application/json")
    assert completed.status_code == 201, completed.content
    result = completed.json()
    assert (result["status"], result["original_name"]) == ("done", "my car.png")
    assert on_s3.client().list_objects_v2(Bucket=on_s3.bucket, Prefix=ticket["fields"]["key"])["KeyCount"] == 0


def test_it_keeps_alices_direct_upload_out_of_bobs_reach(
    client: Any, alice: Any, bob: Any, on_s3: Any, settings: Any, car_png: bytes
) -> None:
    settings.RECONSTRUCT_DIRECT_UPLOADS = True
    client.force_login(alice)
    ticket = client.post("/api/uploads/").json()
    post_to_s3(ticket, car_png)

    client.force_login(bob)
    stolen = client.post(f"/api/uploads/{ticket['upload_id']}/complete/")
    assert stolen.status_code == 400
    assert "no photo for this upload" in stolen.json()["error"]
    assert on_s3.client().list_objects_v2(Bucket=on_s3.bucket, Prefix=ticket["fields"]["key"])["KeyCount"] == 1


def test_it_refuses_a_direct_upload_that_is_not_an_image(client: Any, alice: Any, on_s3: Any, settings: Any) -> None:
    settings.RECONSTRUCT_DIRECT_UPLOADS = True
    client.force_login(alice)
    ticket = client.post("/api/uploads/").json()
    post_to_s3(ticket, b"%PDF-1.4 not a photo\n" * 20)
    refused = client.post(f"/api/uploads/{ticket['upload_id']}/complete/")
    assert refused.status_code == 400
    assert refused.json()["error"] == (
        "This file is a PDF document, not a photo. Please use a photo saved as JPEG, PNG, WebP, GIF, TIFF, BMP or AVIF."
    )
    assert on_s3.client().list_objects_v2(Bucket=on_s3.bucket, Prefix=ticket["fields"]["key"])["KeyCount"] == 0


def test_it_says_direct_uploads_need_s3(client: Any, alice: Any, settings: Any) -> None:
    settings.RECONSTRUCT_DIRECT_UPLOADS = True
    client.force_login(alice)
    response = client.post("/api/uploads/")
    assert response.status_code == 404
    assert "need the media in S3" in response.json()["error"]
