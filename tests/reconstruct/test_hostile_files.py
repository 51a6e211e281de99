"""Hostile and unusual files (tests/hostile.py) through the upload form and the API: each is accepted and
converted right, or refused with its exact message, with no 500 and nothing left in storage or the database."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from django.utils.html import escape
from PIL import Image

from reconstruct.http import LENGTH_REQUIRED, UNREADABLE_PART
from reconstruct.images import display_name
from reconstruct.models import Reconstruction
from reconstruct.views import UNREADABLE_REQUEST
from tests import hostile
from tests.support import draw_car, encode, upload

API_URL = "/api/reconstructions/"
CASES = hostile.cases()


def _files_under(media: Path, folder: str) -> list[Path]:
    return [p for p in (media / folder).rglob("*") if p.is_file()] if (media / folder).exists() else []


def _send(client, channel: str, name: str, data: bytes):
    if channel == "form":
        return client.post(reverse("reconstruct:upload"), {"image": upload(data, name)})
    return client.post(API_URL, {"image": upload(data, name)})


@pytest.mark.parametrize("channel", ["form", "api"])
@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_each_file_is_accepted_or_refused_with_its_exact_message(
    client, alice, settings, media_root: Path, channel: str, case: hostile.Case
) -> None:
    settings.RECONSTRUCT_MODE = "celery"  # queued after commit, which a test transaction never reaches
    client.force_login(alice)
    response = _send(client, channel, case.filename, case.data)
    if case.site is None:
        assert response.status_code == (302 if channel == "form" else 202), response.content[:500]
        reconstruction = Reconstruction.objects.get()
        assert reconstruction.original_name == display_name(case.filename)
        assert "/" not in reconstruction.original_name and "\x00" not in reconstruction.original_name
        assert len(reconstruction.original_name) <= 255
        stored = (media_root / reconstruction.original.name).read_bytes()
        with Image.open(io.BytesIO(stored)) as picture:
            picture.load()
            assert getattr(picture, "n_frames", 1) == 1 and picture.format in ("JPEG", "PNG", "WEBP")
            assert (reconstruction.width, reconstruction.height) == picture.size
        assert b"PK\x03\x04" not in stored  # nothing after the picture (a zip appended to a JPEG)
        return
    if channel == "form":
        assert response.status_code == 400
        assert escape(case.site) in response.content.decode()
    else:
        assert response.status_code == 400
        assert response.json()["error"] == case.site
    assert Reconstruction.objects.count() == 0
    assert _files_under(media_root, "reconstructions") == []


def _body(reconstruction: Reconstruction, media: Path, kind: str) -> tuple[int, ...]:
    """The mean colour of the middle of a car's body (drawn by tests.support.draw_car) in a stored picture, as a
    colour-managed viewer (a browser) shows it: through its colour profile, if it has one."""
    from ml.decode import image_decode

    pixels = np.asarray(image_decode(media / getattr(reconstruction, kind).name).image, dtype=np.float64)
    h, w = pixels.shape[:2]
    return tuple(
        round(float(v)) for v in pixels[int(h * 0.43) : int(h * 0.58), int(w * 0.55) : int(w * 0.85)].mean((0, 1))
    )


def _close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tolerance


@pytest.mark.parametrize("channel", ["form", "api"])
def test_converted_right_through_to_the_model_input(client, alice, media_root: Path, channel: str) -> None:
    """Reconstructed in the request (sync mode): the stored original and what the model saw."""
    client.force_login(alice)
    grey16, expected = hostile.grey16_png(1)
    cutout, _ = hostile.cutout_pair()
    sent = {
        "p3": hostile.p3_jpeg(),
        "grey16": grey16,
        "cutout": cutout,
        "palette": hostile.palette_with_transparency(),
        "mpo": hostile.mpo(),
    }
    rows = {}
    for name, data in sent.items():
        response = _send(client, channel, f"{name}.img", data)
        assert response.status_code == (302 if channel == "form" else 201), response.content[:300]
        rows[name] = Reconstruction.objects.get(original_name=f"{name}.img")
        assert rows[name].status == "done", rows[name].error
    # Display P3: the original keeps its profile (a browser shows it as drawn), the model sees it in sRGB.
    assert _close(_body(rows["p3"], media_root, "original"), hostile.P3_BODY_SRGB, 3)
    with Image.open(media_root / rows["p3"].original.name) as original:
        assert original.info["icc_profile"] == Image.open(io.BytesIO(sent["p3"])).info["icc_profile"]
    assert _close(_body(rows["p3"], media_root, "model_input"), hostile.P3_BODY_SRGB, 4)
    # 16-bit greyscale stretched, not clipped to white.
    with Image.open(media_root / rows["grey16"].model_input.name) as seen:
        assert abs(np.asarray(seen.convert("L"), dtype=np.float64).mean() - expected.mean()) < 4
    # Transparency on white.
    for name in ("cutout", "palette"):
        with Image.open(media_root / rows[name].model_input.name) as seen:
            assert min(seen.convert("RGB").getpixel((1, 1))) >= 250, name
    # The MPO's first frame, stored as a plain JPEG.
    with Image.open(media_root / rows["mpo"].original.name) as stored:
        assert stored.format == "JPEG" and getattr(stored, "n_frames", 1) == 1
    assert _close(_body(rows["mpo"], media_root, "model_input"), (200, 40, 40), 12)


def test_a_chunked_upload_is_refused_with_411_not_no_image(client, alice) -> None:
    client.force_login(alice)
    body = b'--B\r\nContent-Disposition: form-data; name="image"; filename="car.png"\r\n\r\nxx\r\n--B--\r\n'
    headers = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"}
    response = client.generic("POST", API_URL, body, content_type="multipart/form-data; boundary=B", **headers)
    assert response.status_code == 411 and response.json() == {"error": LENGTH_REQUIRED, "code": "length_required"}
    page = client.generic(
        "POST", reverse("reconstruct:upload"), body, content_type="multipart/form-data; boundary=B", **headers
    )
    assert page.status_code == 411 and escape(LENGTH_REQUIRED) in page.content.decode()
    # With neither Content-Length nor Transfer-Encoding there is no body (a bare `curl -X POST`): no photo, said
    # as such, not "chunked" (a new user was told that).
    bare = client.generic("POST", API_URL, b"", CONTENT_LENGTH=None)
    assert bare.status_code == 400 and bare.json()["code"] == "no_image"
    assert Reconstruction.objects.count() == 0


def test_a_file_name_that_is_not_utf8_gets_a_clear_error(client, alice) -> None:
    client.force_login(alice)
    photo = encode(draw_car(), "JPEG")
    disposition = b'Content-Disposition: form-data; name="image"; filename="K\xe4fer.jpg"'
    body = b"--B\r\n" + disposition + b"\r\nContent-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--B--\r\n"
    response = client.generic("POST", API_URL, body, content_type="multipart/form-data; boundary=B")
    assert response.status_code == 400 and response.json() == {"error": UNREADABLE_PART, "code": "unreadable_part"}
    page = client.generic("POST", reverse("reconstruct:upload"), body, content_type="multipart/form-data; boundary=B")
    assert page.status_code == 400 and escape(UNREADABLE_PART) in page.content.decode()
    assert Reconstruction.objects.count() == 0


def test_a_file_name_too_long_for_django_to_parse_gets_a_clear_error(alice) -> None:
    """A part header over Django's 1,024 bytes fails while the CSRF check reads the form, before any view (the
    test client skips that check unless told): the 400 says what is wrong (the admin upload goes the same way)."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get(reverse("reconstruct:upload"))
    photo = encode(draw_car(), "JPEG")
    disposition = b'Content-Disposition: form-data; name="image"; filename="' + b"a" * 1000 + b'.jpg"'
    body = b"--B\r\n" + disposition + b"\r\nContent-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--B--\r\n"
    token = {"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value}
    kind = "multipart/form-data; boundary=B"
    page = client.generic("POST", reverse("reconstruct:upload"), body, content_type=kind, **token)
    assert page.status_code == 400 and escape(UNREADABLE_REQUEST) in page.content.decode()
    answer = client.generic(
        "POST", reverse("reconstruct:upload"), body, content_type=kind, HTTP_ACCEPT="application/json", **token
    )
    assert answer.status_code == 400 and answer.json() == {"error": UNREADABLE_REQUEST, "code": "bad_request"}
    assert Reconstruction.objects.count() == 0


def test_bodies_django_refuses_before_any_view_get_a_clear_error(alice) -> None:
    """Too many form fields (a 400 page with an empty message before), a JSON body over Django's in-memory limit
    (400 HTML on the API) and JSON nested past Python's recursion limit (a 500): each says what is wrong, as JSON
    on the API and on a page otherwise. Found by an attack review (stop 27)."""
    from reconstruct.services.tokens import api_token_regenerate

    api = Client(HTTP_AUTHORIZATION=f"Token {api_token_regenerate(alice)}")
    fields = "&".join(f"a{i}=1" for i in range(2000))
    answer = api.post(API_URL, fields, content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 400 and answer.json()["code"] == "bad_request"
    assert "too many form fields" in answer.json()["error"]
    browser = Client()
    browser.force_login(alice)
    page = browser.post(reverse("reconstruct:upload"), fields, content_type="application/x-www-form-urlencoded")
    assert page.status_code == 400 and "too many form fields" in page.content.decode()
    big = api.post("/api/decode/", b'{"latent": [' + b"0," * 1_500_000 + b"0]}", content_type="application/json")
    assert big.status_code == 413 and big.json() == {"error": "The request is too large.", "code": "too_large"}
    for url in ("/api/decode/", "/api/samples/", f"/api/uploads/{'0' * 8}-0000-0000-0000-{'0' * 12}/complete/"):
        deep = api.post(url, "[" * 50_000 + "]" * 50_000, content_type="application/json")
        assert deep.status_code in (400, 404) and deep.json()["code"] != "server_error", (url, deep.content[:200])
    assert Reconstruction.objects.count() == 0


def test_a_size_just_over_the_limit_never_reads_as_equal_to_it(client, alice, settings) -> None:
    settings.RECONSTRUCT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
    client.force_login(alice)
    big = upload(b"\xff\xd8" + bytes(25 * 1024 * 1024 - 1), "big.jpg")
    response = client.post(API_URL, {"image": big})
    assert response.status_code == 413
    assert response.json()["error"].startswith("The file is 26,214,401 bytes; the limit is 26,214,400 bytes. ")
