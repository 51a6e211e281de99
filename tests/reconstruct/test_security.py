"""Security: throttled guessing (logins per account and per address, the admin's login, API tokens, password
resets), the response headers (CSP without inline script, Permissions-Policy, no-store on the token page, HSTS
and the HTTPS redirect in production, `check --deploy` clean), and one rule for other people's reconstructions."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from reconstruct.services.reconstructions import reconstruction_create
from reconstruct.services.tokens import api_token_regenerate
from tests.support import PASSWORD, ROOT, make_user, upload

LIMIT = 3  # the LIMIT-th failure in a row is answered 429, and so is every try after it during the cool-off


@pytest.fixture
def throttled(settings: Any) -> Any:
    settings.AXES_FAILURE_LIMIT = LIMIT
    return settings


def from_address(address: str) -> Client:
    """A browser at client address ``address``."""
    return Client(REMOTE_ADDR=address)


def log_in(client: Client, username: str, password: str, url: str = "/accounts/login/") -> Any:
    return client.post(url, {"username": username, "password": password})


def test_it_throttles_password_guessing_per_account(throttled, alice) -> None:
    for attempt in range(LIMIT - 1):
        assert log_in(from_address(f"198.51.100.{attempt}"), "alice", "wrong").status_code == 200
    assert log_in(from_address("198.51.100.50"), "alice", "wrong").status_code == 429
    # From yet another address, even the right password waits: the account is paused.
    refused = log_in(from_address("198.51.100.99"), "alice", PASSWORD)
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "Too many attempts" in refused.content.decode()
    assert log_in(from_address("198.51.100.99"), "bob-not-there", "x").status_code == 200  # other accounts: fine


def test_it_throttles_password_guessing_per_address(throttled, alice, bob) -> None:
    guesser = from_address("203.0.113.7")
    for name in ("carol", "dave"):
        assert log_in(guesser, name, "wrong").status_code == 200
    assert log_in(guesser, "erin", "wrong").status_code == 429
    assert log_in(guesser, "bob", PASSWORD).status_code == 429
    assert log_in(from_address("203.0.113.8"), "bob", PASSWORD).status_code == 302  # bob, elsewhere: fine


def test_a_successful_login_resets_the_count(throttled, alice) -> None:
    browser = from_address("192.0.2.1")
    for _ in range(LIMIT - 1):
        log_in(browser, "alice", "wrong")
    assert log_in(browser, "alice", PASSWORD).status_code == 302
    for _ in range(LIMIT - 1):
        assert log_in(from_address("192.0.2.1"), "alice", "wrong").status_code == 200


def test_logging_in_to_ones_own_account_keeps_the_guesses_at_another(throttled, alice, bob) -> None:
    """A guesser who logs in to an account of their own between guesses does not wipe the guesses at alice's
    (django-axes' own reset on success deleted every attempt from the same address: guessing without end)."""
    for _ in range(LIMIT - 1):
        assert log_in(from_address("203.0.113.20"), "alice", "wrong").status_code == 200
    assert log_in(from_address("203.0.113.20"), "bob", PASSWORD).status_code == 302
    assert log_in(from_address("203.0.113.20"), "alice", "wrong").status_code == 429
    assert log_in(from_address("203.0.113.21"), "alice", PASSWORD).status_code == 429  # the account is paused
    # The same for reset requests, each an email to alice: a login of one's own between them clears none.
    for _ in range(LIMIT - 1):
        assert (
            from_address("203.0.113.22").post("/accounts/password_reset/", {"email": "alice@example.com"}).status_code
            == 302
        )
    assert log_in(from_address("203.0.113.22"), "bob", PASSWORD).status_code == 302
    assert (
        from_address("203.0.113.23").post("/accounts/password_reset/", {"email": "alice@example.com"}).status_code
        == 429
    )
    assert len(mail.outbox) == LIMIT - 1


def test_it_limits_the_new_accounts_one_email_address_gets_in_an_hour(throttled, alice) -> None:
    """Each new account may email the address it gives ("a new carsite account uses your email address"): at most
    SIGNUPS_PER_EMAIL_PER_HOUR accounts a sign-up per address and hour, so nobody can flood an inbox. Counted from
    the accounts, never against the client's address: sign-ups from one address do not lock its logins."""
    from reconstruct.services.accounts import SIGNUPS_PER_EMAIL_PER_HOUR

    shared = from_address("198.51.100.60")  # more sign-ups from one address than the login throttle's LIMIT
    before = len(mail.outbox)
    for attempt in range(SIGNUPS_PER_EMAIL_PER_HOUR - 1):  # alice's account, made just now, is the first
        form = {"username": f"flood{attempt}", "email": "ALICE@example.com", "password1": PASSWORD}
        assert shared.post("/accounts/signup/", {**form, "password2": PASSWORD}).status_code == 302
        shared.post("/accounts/logout/")
    form = {"username": "flood-last", "email": "alice@example.com", "password1": PASSWORD, "password2": PASSWORD}
    refused = from_address("198.51.100.61").post("/accounts/signup/", form)
    assert (
        refused.status_code == 429 and "Too many accounts were made with this email address" in refused.content.decode()
    )
    assert 3500 < int(refused["Retry-After"]) <= 3601
    assert len(mail.outbox) - before == SIGNUPS_PER_EMAIL_PER_HOUR - 1
    form = {"username": "other", "email": "other@example.com", "password1": PASSWORD, "password2": PASSWORD}
    assert from_address("198.51.100.61").post("/accounts/signup/", form).status_code == 302  # another email: fine
    assert log_in(from_address("198.51.100.60"), "alice", PASSWORD).status_code == 302


def test_it_throttles_the_admins_login(throttled, db) -> None:
    make_user("root", staff=True)
    guesser = from_address("203.0.113.9")
    for _ in range(LIMIT - 1):
        assert log_in(guesser, "root", "wrong", url="/admin/login/").status_code == 200
    assert log_in(guesser, "root", "wrong", url="/admin/login/").status_code == 429
    assert log_in(guesser, "root", PASSWORD, url="/admin/login/").status_code == 429


def test_it_throttles_api_token_guessing_per_address(throttled, alice) -> None:
    token = api_token_regenerate(alice)
    guesser = from_address("203.0.113.10")
    for expected in [401] * (LIMIT - 1) + [429]:
        response = guesser.get("/api/reconstructions/", HTTP_AUTHORIZATION=f"Token {secrets.token_urlsafe(30)}")
        assert response.status_code == expected
    refused = guesser.get("/api/reconstructions/", HTTP_AUTHORIZATION=f"Token {secrets.token_urlsafe(30)}")
    assert refused.status_code == 429 and refused.json()["code"] == "throttled"
    assert int(refused["Retry-After"]) == refused.json()["retry_after"] > 0
    # A valid token is never a guess (256 random bits), so it is not refused: not for its owner at another
    # address, nor for a client behind the guesser's address (the throttle's query is only paid on failures).
    owner = from_address("203.0.113.11")
    assert owner.get("/api/reconstructions/", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200
    assert guesser.get("/api/reconstructions/", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200


def test_it_throttles_password_reset_requests_and_link_guessing(throttled, alice) -> None:
    browser = from_address("203.0.113.12")
    for _ in range(LIMIT - 1):
        assert browser.post("/accounts/password_reset/", {"email": "alice@example.com"}).status_code == 302
    for _ in range(2):
        assert browser.post("/accounts/password_reset/", {"email": "alice@example.com"}).status_code == 429
    assert len(mail.outbox) == LIMIT - 1

    guesser = from_address("203.0.113.13")
    for attempt in range(LIMIT - 1):
        response = guesser.get(f"/accounts/reset/MQ/{attempt}bc-0123456789abcdef0123456789abcdef/")
        assert response.status_code == 200 and not response.context["validlink"]
    assert guesser.get("/accounts/reset/MQ/9bc-0123456789abcdef0123456789abcdef/").status_code == 429
    assert guesser.get("/accounts/reset/MQ/xyz-0123456789abcdef0123456789abcdef/").status_code == 429


def test_pages_carry_a_content_security_policy_without_inline_script(client, alice) -> None:
    client.force_login(alice)
    response = client.get(reverse("reconstruct:upload"))
    policy = dict(part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";"))
    assert policy["script-src"] == "'self'" and policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert "camera=()" in response["Permissions-Policy"] and "geolocation=()" in response["Permissions-Policy"]


def test_no_template_has_an_inline_script() -> None:
    inline = []
    for template in (ROOT / "templates").rglob("*.html"):
        for tag in re.findall(r"<script\b[^>]*>", template.read_text()):
            if "src=" not in tag and 'type="application/json"' not in tag:
                inline.append(f"{template.relative_to(ROOT)}: {tag}")
    assert inline == []


def test_the_token_page_is_never_cached(client, alice) -> None:
    client.force_login(alice)
    client.post(reverse("account"), {"action": "regenerate"})
    response = client.get(reverse("account"))
    assert "no-store" in response["Cache-Control"]


def test_production_settings_pass_djangos_deployment_checks(tmp_path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "carsite.settings",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "cars.example.com",
        "CARSITE_RUN_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_redirects_to_https_and_sends_hsts(settings, client, db) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    assert client.get("/").status_code == 301
    secure = client.get("/", secure=True)
    assert secure.status_code == 200 and secure["Strict-Transport-Security"].startswith("max-age=31536000")


def test_other_peoples_reconstructions_are_404_on_the_site_for_everyone_staff_included(alice, car_png) -> None:
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    staff = Client()
    staff.force_login(make_user("root", staff=True))
    page = f"/r/{reconstruction.uuid}/"
    api = f"/api/reconstructions/{reconstruction.uuid}/"
    for url in (page, f"{page}files/original", f"{page}files/reconstruction", api):
        assert staff.get(url).status_code == 404, url
    # Staff see them in the admin, the one place the rule allows them to.
    admin_file = reverse("admin:reconstruct_reconstruction_file", args=[reconstruction.uuid, "thumbnail"])
    assert staff.get(admin_file).status_code == 200
    owner = Client()
    owner.force_login(alice)
    assert owner.get(f"{page}files/thumbnail").status_code == 200
    assert owner.get(admin_file).status_code == 302  # not staff: to the admin's login


def test_the_admins_page_of_a_reconstruction_links_files_staff_can_open(alice, car_png) -> None:
    import re

    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    staff = Client()
    staff.force_login(make_user("root", staff=True))
    page = staff.get(reverse("admin:reconstruct_reconstruction_change", args=[reconstruction.pk])).content.decode()
    assert "/media/" not in page  # the storage's address, which nothing serves
    links = re.findall(r'href="(/admin/reconstruct/reconstruction/[^"]+/file/[a-z_]+/)"', page)
    assert {link.rstrip("/").rsplit("/", 1)[-1] for link in links} == {
        "original",
        "thumbnail",
        "model_input",
        "reconstruction",
    }
    for link in links:
        assert staff.get(link).status_code == 200, link


def test_behind_a_proxy_it_counts_the_address_the_proxy_saw(throttled, settings, alice) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = Client(REMOTE_ADDR="10.0.0.1")
    for attempt in range(LIMIT - 1):
        # A guesser cannot escape by inventing addresses on the left: the proxy appends the one it saw.
        headers = {"HTTP_X_FORWARDED_FOR": f"1.2.3.{attempt}, 203.0.113.20"}
        assert (
            proxy.post("/accounts/login/", {"username": f"x{attempt}", "password": "p"}, **headers).status_code == 200
        )
    blocked = proxy.post("/accounts/login/", {"username": "y", "password": "p"}, HTTP_X_FORWARDED_FOR="203.0.113.20")
    assert blocked.status_code == 429
    # Another visitor behind the same proxy is not.
    other = proxy.post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD}, HTTP_X_FORWARDED_FOR="203.0.113.21"
    )
    assert other.status_code == 302


ECHO_APP = """
import json, os
from carsite.wsgi import without_process_environment

def echo(environ, start_response):
    body = json.dumps({k: v for k, v in environ.items() if isinstance(v, str)}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]

bare = echo
wrapped = without_process_environment(echo)
"""


@pytest.mark.integration
@pytest.mark.parametrize("app, leaks", [("bare", True), ("wrapped", False)])
def test_the_web_servers_copy_of_the_environment_never_reaches_a_request(tmp_path, app: str, leaks: bool) -> None:
    """Granian (`make run`'s web server) starts each request's environ from os.environ, secrets included;
    carsite/wsgi.py takes them out before Django sees the request (request.META, error reports)."""
    import json
    import socket
    import time
    import urllib.request

    (tmp_path / "echo_app.py").write_text(ECHO_APP)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "CARSITE_TEST_SECRET": "s3cr3t"}
    # Variables named like request keys: read as if the client had sent them (a Proxy header, a signed-in user).
    env |= {"HTTP_PROXY": "http://user:pw@proxy:3128", "REMOTE_USER": "admin", "CONTENT_TYPE": "text/evil"}
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "granian", "--interface", "wsgi", "--no-ws", "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", "1", "--blocking-threads", "2", f"echo_app:{app}"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/x?y=1", timeout=5) as response:
                    keys = json.load(response)
                posted = urllib.request.Request(
                    f"http://127.0.0.1:{port}/x", data=b"{}", headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(posted, timeout=5) as response:
                    post_keys = json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(30)
    for name in ("CARSITE_TEST_SECRET", "PATH", "HTTP_PROXY", "REMOTE_USER", "CONTENT_TYPE"):
        assert (name in keys) is leaks, name
    assert {"REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR", "SERVER_NAME", "HTTP_HOST"} <= set(keys)
    assert keys["REQUEST_METHOD"] == "GET" and keys["QUERY_STRING"] == "y=1"
    assert post_keys["CONTENT_TYPE"] == "application/json" and post_keys["REQUEST_METHOD"] == "POST"


class _UnreadBody:
    """A request body that fails the test if anything reads it."""

    def read(self, *args: Any) -> bytes:
        raise AssertionError("the body was read")

    readline = read


@pytest.mark.django_db
def test_a_refused_token_or_a_too_large_body_is_answered_without_reading_the_body(client: Client, throttled) -> None:
    """A wrong token's failure record and a session's CSRF check both read the form data: an unauthenticated
    client could make the server read (and hold a thread for) any body. Neither is read now."""
    multipart = {"CONTENT_TYPE": "multipart/form-data; boundary=xx", "wsgi.input": _UnreadBody()}
    small, huge = {"CONTENT_LENGTH": "20000"}, {"CONTENT_LENGTH": str(50 * 2**20)}
    wrong = {"HTTP_AUTHORIZATION": "Token cs_wrong"}
    response = client.generic("POST", "/api/reconstructions/", **multipart, **small, **wrong)
    assert response.status_code == 401 and "not valid" in response.json()["error"]
    for headers in (wrong, {}):  # a wrong token, or a signed-in browser's session (its CSRF check reads the form)
        response = client.generic("POST", "/api/reconstructions/", **multipart, **huge, **headers)
        assert response.status_code == 413 and response.json()["code"] == "too_large"
        assert "the limit is" in response.json()["error"]
    client.force_login(make_user("carol"))
    response = client.generic("POST", "/api/reconstructions/", **multipart, **huge)
    assert response.status_code == 413 and response.json()["code"] == "too_large"


@pytest.mark.django_db
def test_no_form_reads_a_body_larger_than_its_sender_may_send(client: Client, settings: Any) -> None:
    """Django streams a form's files of any size to temporary files, and the CSRF check reads the form of every
    POST: the sign-in form would read 300 MB to disk for anyone holding a CSRF cookie. A body over the largest
    photo (plus framing) is refused before it is read, except staff's to the admin, which takes a zip."""
    multipart = {"CONTENT_TYPE": "multipart/form-data; boundary=xx", "wsgi.input": _UnreadBody()}
    over = {"CONTENT_LENGTH": str(settings.RECONSTRUCT_MAX_REQUEST_BYTES + 1)}
    for path in ("/accounts/login/", "/accounts/signup/", "/admin/login/", "/admin/curation/datasetimage/upload/"):
        response = client.generic("POST", path, **multipart, **over)
        assert response.status_code == 413, path
        assert response["Content-Type"].startswith("text/plain")
        expected = "This request is 27,262,977 bytes; this site takes at most 27,262,976 bytes in one request."
        assert response.content.decode() == expected  # exact sizes where rounding would show the same figure
    client.force_login(make_user("dora"))
    page = client.generic("POST", reverse("reconstruct:upload"), **multipart, **over)
    assert page.status_code == 413 and b"the limit is 25.0 MB" in page.content and b"<form" in page.content
    assert page["X-Frame-Options"] == "DENY" and "Content-Security-Policy" in page and "Permissions-Policy" in page
    api = client.generic("POST", "/api/reconstructions/", **multipart, **over, HTTP_ACCEPT="application/json")
    assert api.status_code == 413 and api.json()["code"] == "too_large"
    assert api.json()["error"].startswith("The file is 26.0 MB; the limit is 25.0 MB.")

    staff = Client()
    staff.force_login(make_user("erin", staff=True))
    admin_upload = reverse("admin:curation_datasetimage_upload")
    with pytest.raises(AssertionError, match="the body was read"):  # let through: the admin's view reads it
        staff.generic("POST", admin_upload, **multipart, **over)
    # Outside the admin, staff are held to everyone's limit (their photo is not read to be refused after).
    page = staff.generic("POST", reverse("reconstruct:upload"), **multipart, **over)
    assert page.status_code == 413 and b"the limit is 25.0 MB" in page.content
    settings.RECONSTRUCT_MAX_STAFF_REQUEST_BYTES = settings.RECONSTRUCT_MAX_REQUEST_BYTES + 1
    response = staff.generic("POST", admin_upload, **multipart, CONTENT_LENGTH=str(2**31))
    assert response.status_code == 413 and "staff may send the admin at most" in response.content.decode()
    # Within the limit nothing changes: a request of the largest photo's size is read as before.
    within = {"CONTENT_LENGTH": str(settings.RECONSTRUCT_MAX_UPLOAD_BYTES + 1000)}
    with pytest.raises(AssertionError, match="the body was read"):
        client.generic("POST", "/accounts/login/", **multipart, **within)


def test_the_staff_limit_is_never_below_everyone_s(tmp_path: Any) -> None:
    """A general limit raised above 2 GB raises the staff limit's default with it; a lower staff limit is refused."""
    probe = "from django.conf import settings; print(settings.RECONSTRUCT_MAX_STAFF_REQUEST_BYTES)"
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "carsite.settings",
        "RECONSTRUCT_MAX_REQUEST_BYTES": "3000000000",
    }
    command = [sys.executable, "-c", "import django; django.setup(); " + probe]
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "3000000000", done.stderr[-2000:]
    environment["RECONSTRUCT_MAX_STAFF_REQUEST_BYTES"] = "2000000000"
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "RECONSTRUCT_MAX_STAFF_REQUEST_BYTES must be at least 3000000000" in done.stderr


@pytest.mark.django_db
def test_a_host_not_allowed_is_one_warning_line_not_an_error_with_a_traceback(client: Client) -> None:
    """Scanners send any Host header: each is answered 400 and logged as one line that names the host."""
    import io
    import logging

    from carsite.log import ClientErrorFormatter

    handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, ClientErrorFormatter))
    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(other)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        response = client.get("/", HTTP_HOST="scanner.example")
        logging.getLogger("reconstruct").error("a real fault")
    finally:
        handler.setStream(previous)
        logging.getLogger().removeHandler(other)
    assert response.status_code == 400
    # Another handler still receives Django's own record, at ERROR with its exception.
    host = [r for r in seen if r.name == "django.security.DisallowedHost"]
    assert host and host[0].levelno == logging.ERROR and host[0].exc_info
    lines = stream.getvalue().splitlines()
    assert any("WARNING django.security.DisallowedHost" in line and "scanner.example" in line for line in lines)
    assert not any("Traceback" in line or "ERROR django.security" in line for line in lines), lines
    assert any("ERROR reconstruct: a real fault" in line for line in lines)
