"""The site on Lambda: zappa's own handler, from the built bundle, fed API Gateway v1 proxy events.

One module-scoped container serves every test here, as one warm Lambda container serves a visitor's requests; each
test signs up its own user. PostgreSQL and S3 (moto's server over HTTP) are real services on loopback.
"""

from __future__ import annotations

import io
import os
import re
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
from lambda_helpers import (
    HOST,
    STAGE,
    LambdaContainer,
    Response,
    multipart_body,
    zappa_stage_settings,
)
from PIL import Image

from tests.support import S3Server, draw_car, encode

pytestmark = getattr(pytest.mark, "lambda")


def sign_up(container: LambdaContainer) -> tuple[str, str]:
    """A new account through the sign-up form; the container keeps its session cookie."""
    username, password = f"driver{uuid.uuid4().hex[:8]}", "a-long-test-password-8341"
    token = container.csrf_token("/accounts/signup/")
    response = container.post_form(
        "/accounts/signup/",
        {
            "csrfmiddlewaretoken": token,
            "username": username,
            "email": f"{username}@example.com",
            "password1": password,
            "password2": password,
        },
    )
    assert response.status == 302, response.text[:2000]
    assert response.header("Location") == f"/{STAGE}/reconstruct/"
    assert "sessionid" in container.cookies
    return username, password


def upload(container: LambdaContainer, filename: str, content_type: str, data: bytes) -> Response:
    token = container.csrf_token("/reconstruct/")
    return container.post_multipart(
        "/reconstruct/", {"csrfmiddlewaretoken": token}, {"image": (filename, content_type, data)}
    )


def error_text(response: Response) -> str:
    """The page's error box, as a person reads it."""
    match = re.search(r'<div class="error-box"[^>]*>(.*?)</div>', response.text, re.DOTALL)
    assert match, response.text[:2000]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(1))).strip()


def test_it_migrates_the_database_through_zappa_manage(migrated_container: LambdaContainer, postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        applied = {row[0] for row in connection.execute("SELECT DISTINCT app FROM django_migrations")}
        tables = {row[0] for row in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"auth", "sessions", "reconstruct"} <= applied
    assert "reconstruct_reconstruction" in tables


def test_it_serves_the_home_page_and_static_files_under_the_stage_prefix(
    migrated_container: LambdaContainer, lambda_task_root: Path
) -> None:
    container = migrated_container
    home = container.get("/", cookies=False)
    assert home.status == 200
    assert "Sign up" in home.text
    stylesheets = re.findall(r'<link[^>]+href="([^"]+\.css)"', home.text)
    assert stylesheets and all(url.startswith(f"/{STAGE}/static/") for url in stylesheets)

    # API Gateway strips the stage from the path it hands to the function.
    css = container.get(stylesheets[0].removeprefix(f"/{STAGE}"), cookies=False)
    assert css.status == 200
    assert css.header("Content-Type").startswith("text/css")
    assert (
        css.body == (lambda_task_root / "staticfiles" / stylesheets[0].removeprefix(f"/{STAGE}/static/")).read_bytes()
    )

    # A binary response (binary_support): the home page's drawn example, reconstructed by the model in the bundle.
    example_url = re.search(rf'<img[^>]+src="(/{STAGE}/examples/[^"]+\.png[^"]*)"', home.text).group(1)
    path, _, query = example_url.removeprefix(f"/{STAGE}").partition("?")
    example = container.get(path, query=dict(q.split("=", 1) for q in query.split("&") if q) or None, cookies=False)
    assert example.status == 200
    assert example.is_base64
    assert example.body.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(example.body)).size[0] > 0


def test_it_signs_up_logs_in_and_returns_the_finished_reconstruction(migrated_container: LambdaContainer) -> None:
    container = migrated_container
    container.cookies.clear()
    username, password = sign_up(container)

    token = container.csrf_token("/reconstruct/")
    logged_out = container.post_form("/accounts/logout/", {"csrfmiddlewaretoken": token})
    assert logged_out.status == 302
    assert "sessionid" not in container.cookies
    assert container.get("/reconstruct/").status == 302  # to the login page

    token = container.csrf_token("/accounts/login/")
    logged_in = container.post_form(
        "/accounts/login/", {"csrfmiddlewaretoken": token, "username": username, "password": password}
    )
    assert logged_in.status == 302
    assert logged_in.header("Location") == f"/{STAGE}/reconstruct/"

    uploaded = upload(container, "red car.jpg", "image/jpeg", encode(draw_car((640, 360)), "JPEG", quality=90))
    assert uploaded.status == 302, uploaded.text[:2000]
    detail_url = uploaded.header("Location")
    assert re.fullmatch(rf"/{STAGE}/r/[0-9a-f-]{{36}}/", detail_url)
    public_id = detail_url.split("/")[-2]

    # Sync mode: the reconstruction finished inside the upload's request, so the first look shows the result.
    detail = container.get(detail_url.removeprefix(f"/{STAGE}"))
    assert detail.status == 200
    assert "How close is it?" in detail.text
    assert "Reconstructing" not in detail.text
    status = container.get(f"/api/reconstructions/{public_id}/", headers={"Accept": "application/json"}).json()
    assert status["status"] == "done"
    assert status["scores"]["psnr"] > 10
    assert status["status_url"].startswith(f"https://{HOST}/{STAGE}/api/")

    # The PNG: the site answers with a redirect to a short-lived presigned S3 URL (responses through Lambda are
    # capped at 6 MB), which the browser then fetches from S3 itself.
    pictures = {}
    for kind in ("model_input", "reconstruction"):
        redirect = container.get(f"/r/{public_id}/files/{kind}")
        assert redirect.status == 302
        with urllib.request.urlopen(redirect.header("Location"), timeout=10) as s3_response:
            pictures[kind] = s3_response.read()
    assert pictures["reconstruction"].startswith(b"\x89PNG\r\n\x1a\n")
    reconstruction = Image.open(io.BytesIO(pictures["reconstruction"]))
    assert reconstruction.size == Image.open(io.BytesIO(pictures["model_input"])).size


def test_a_warm_container_keeps_its_database_connection_between_requests(
    migrated_container: LambdaContainer, postgres_url: str
) -> None:
    """Requests after the first reuse the container's connection (DATABASE_CONN_MAX_AGE, 300 s on Lambda) instead of
    connecting and authenticating again each time; one the server closes is replaced by the next request, or by the
    next scheduled event (the sweep), which runs outside any request."""
    container = migrated_container
    container.cookies.clear()
    sign_up(container)

    def site_connections(connection: psycopg.Connection) -> set[int]:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {row[0] for row in rows}

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        assert container.get("/reconstruct/").status == 200  # the session and the user: read from the database
        kept = site_connections(connection)
        assert len(kept) == 1, kept  # still open after the response (closed at its end before)
        assert container.get("/gallery/").status == 200
        assert site_connections(connection) == kept

        connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s", (kept.pop(),))
        assert container.get("/gallery/").status == 200  # checked before reuse, replaced: not a 500
        kept = site_connections(connection)
        assert len(kept) == 1

        # The scheduled sweep (zappa_settings.json "events") runs outside any request, in the same container: one
        # sweep after another, with the connection closed by the server in between (idle_session_timeout, say).
        rule = f"arn:aws:events:us-east-1:123456789012:rule/carsite-{STAGE}-reconstruct.tasks"
        sweep = {"detail-type": "Scheduled Event", "resources": [f"{rule}.reconstruction_sweep_event"]}
        assert set(container.invoke(sweep)) == {"requeued", "failed"}
        kept = site_connections(connection)
        connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s", (kept.pop(),))
        assert set(container.invoke(sweep)) == {"requeued", "failed"}
        assert container.get("/gallery/").status == 200


def test_it_refuses_a_file_that_is_not_an_image(migrated_container: LambdaContainer) -> None:
    container = migrated_container
    container.cookies.clear()
    sign_up(container)
    response = upload(container, "car.jpg", "image/jpeg", b"%PDF-1.4 this is a document, not a photo\n" * 50)
    assert response.status == 400
    assert "This file is a PDF document, not a photo. Please use a photo saved as JPEG, PNG" in error_text(response)


def noise_image(width: int, height: int, image_format: str) -> bytes:
    """A photo-sized picture that does not compress (random pixels)."""
    picture = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buffer = io.BytesIO()
    picture.save(buffer, image_format, **({"quality": 95} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def test_it_refuses_an_upload_too_large_for_one_lambda_request(migrated_container: LambdaContainer) -> None:
    container = migrated_container
    container.cookies.clear()
    sign_up(container)
    photo = noise_image(1250, 1200, "PNG")  # ~4.5 MB: over the 4 MB a request may carry, under Lambda's 6 MB event
    assert 4.2e6 < len(photo) < 4.6e6
    response = upload(container, "huge.png", "image/png", photo)
    assert response.status == 413
    message = error_text(response)
    assert "AWS Lambda accepts at most 6 MB per request" in message
    assert "straight to storage" in message


def test_it_reconstructs_a_large_photo_sent_straight_to_s3(
    migrated_container: LambdaContainer, lambda_s3: S3Server
) -> None:
    container = migrated_container
    container.cookies.clear()
    sign_up(container)
    container.csrf_token("/reconstruct/")
    api_headers = {
        "Accept": "application/json",
        "X-CSRFToken": container.cookies["csrftoken"],
        "Origin": f"https://{HOST}",
    }
    presigned = container.request("POST", "/api/uploads/", headers=api_headers)
    assert presigned.status == 201, presigned.text
    ticket = presigned.json()

    photo = noise_image(2400, 1800, "JPEG")  # ~5 MB: too big to pass through Lambda
    assert len(photo) > 4.5e6
    body, content_type = multipart_body(ticket["fields"], {"file": ("big car.jpg", "image/jpeg", photo)})
    to_s3 = urllib.request.Request(ticket["url"], data=body, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(to_s3, timeout=30) as s3_response:
        assert s3_response.status in (200, 201, 204)

    completed = container.request(
        "POST",
        ticket["complete_url"].split(f"/{STAGE}", 1)[1],
        body='{"name": "big car.jpg"}',
        headers={**api_headers, "Content-Type": "application/json"},
    )
    assert completed.status == 201, completed.text
    result = completed.json()
    assert result["status"] == "done"
    assert (result["original_name"], result["width"], result["height"]) == ("big car.jpg", 2400, 1800)
    bucket = zappa_stage_settings()["environment_variables"]["AWS_STORAGE_BUCKET_NAME"]
    leftovers = lambda_s3.client().list_objects_v2(Bucket=bucket, Prefix="incoming/").get("KeyCount")
    assert leftovers == 0

    again = container.request("POST", ticket["complete_url"].split(f"/{STAGE}", 1)[1], body="", headers=api_headers)
    assert again.status == 400
    assert "no photo for this upload" in again.json()["error"]


def test_it_makes_a_staff_user_with_zappa_invoke_raw_and_serves_every_admin_page(
    migrated_container: LambdaContainer,
) -> None:
    container = migrated_container
    container.cookies.clear()
    username, _password = sign_up(container)
    # README: `zappa invoke dev --raw "..."` sends {"raw_command": ...}.
    promote = "from django.contrib.auth.models import User; " + (
        f"User.objects.filter(username={username!r}).update(is_staff=True, is_superuser=True)"
    )
    container.invoke({"raw_command": promote})

    index = container.get("/admin/")
    assert index.status == 200
    changelists = sorted(set(re.findall(rf'href="/{STAGE}(/admin/\w+/\w+/)"', index.text)))
    assert "/admin/reconstruct/reconstruction/" in changelists
    for path in changelists:
        page = container.get(path)
        assert page.status == 200, f"{path}: {page.status}"
