"""Shared fixtures: a temporary media root, users alice and bob, small drawn pictures, and the real
services the integration and browser tests run against (redis-server, a Celery worker process,
moto's S3 server over HTTP). Nothing here reads ../shared: every picture is drawn with Pillow.
The helpers behind them, for tests to import, are in tests/support.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support import (
    BACKGROUND,
    S3Server,
    WorkerProcess,
    draw_car,
    encode,
    make_user,
    moto_server,
    redis_server,
    start_worker,
    stop_worker,
    worker_environment,
)

# --- Which tests run -------------------------------------------------------------------------------

DATABASE_FIXTURES = {"db", "transactional_db", "django_db_setup", "live_server"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL run (tests/on_postgres.py) only the tests that touch the database: those marked
    django_db or using a database fixture, directly or through another fixture (alice, live_server, ...)."""
    if not os.environ.get("CARSITE_DATABASE_TESTS_ONLY"):
        return
    keep, drop = [], []
    for item in items:
        uses_database = item.get_closest_marker("django_db") or DATABASE_FIXTURES.intersection(item.fixturenames)
        (keep if uses_database else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# --- Settings for every test ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: Any) -> None:
    """SQLite test databases live in a file (not in memory) so a worker process can share them."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture(scope="session", autouse=True)
def plain_static_names() -> Iterator[None]:
    """Static files under their plain names in every test, as a clean checkout serves them. A `make run` in
    this checkout leaves hashed copies in staticfiles/ (carsite/staticfiles.py would use them), which the live
    server's static handler does not know. Set once for the session (a per-test change of STORAGES would
    replace default_storage under a test that monkeypatches it)."""
    from django.conf import settings
    from django.test.utils import override_settings

    plain = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    override = override_settings(STORAGES={**settings.STORAGES, "staticfiles": plain})
    override.enable()
    yield
    override.disable()


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


DJANGO_FIXTURES = {"settings", "db", "transactional_db", "client", "admin_client", "live_server", "django_db_setup"}


@pytest.fixture(autouse=True)
def media_root(request: pytest.FixtureRequest, tmp_path: Path, model_cache_dir: Path) -> Iterator[Path | None]:
    """Files go to a fresh temporary MEDIA_ROOT, never into ./media; reconstructions run in the
    request (sync mode) unless a test asks for the queue."""
    if not DJANGO_FIXTURES.intersection(request.fixturenames) and not request.node.get_closest_marker("django_db"):
        # Tests that never touch Django (tests/ml) do not need it.
        yield None
        return
    settings = request.getfixturevalue("settings")
    media = tmp_path / "media"
    media.mkdir()
    settings.MEDIA_ROOT = media
    settings.MODEL_CACHE_DIR = model_cache_dir
    settings.RECONSTRUCT_MODE = "sync"
    # Django's real hasher takes about half a second per password on these machines.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    yield media


# --- Users --------------------------------------------------------------------------------------------


@pytest.fixture
def alice(db: None) -> Any:
    return make_user("alice")


@pytest.fixture
def bob(db: None) -> Any:
    return make_user("bob")


# --- Pictures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def car_png() -> bytes:
    return encode(draw_car(), "PNG")


@pytest.fixture(scope="session")
def car_jpeg() -> bytes:
    return encode(draw_car(body=(30, 90, 190)), "JPEG", quality=90)


@pytest.fixture(scope="session")
def exif_rotated_jpeg() -> bytes:
    """A 2:1 car stored sideways (120x240 pixels) with EXIF orientation 6: shown upright it is 240x120."""
    sideways = draw_car().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "Test camera"  # Make: metadata that must not survive
    return encode(sideways, "JPEG", quality=90, exif=exif)


@pytest.fixture(scope="session")
def transparent_png() -> bytes:
    """A car on a fully transparent background (RGBA)."""
    image = draw_car(mode="RGBA")
    pixels = image.load()
    for y in range(image.height):
        for x in range(image.width):
            if pixels[x, y] == (*BACKGROUND, 255):
                pixels[x, y] = (0, 0, 0, 0)
    return encode(image, "PNG")


@pytest.fixture(scope="session")
def not_an_image() -> bytes:
    return b"%PDF-1.4\nthis is not a picture of a car\n" * 20


# --- Real services: Redis, moto's S3 server, a Celery worker process -------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a loopback port, in its own folder, for the whole session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def celery_app_on_test_redis(redis_url: str) -> Any:
    """The project's Celery app, publishing to the test Redis."""
    from carsite.celery import app

    app.conf.broker_url = redis_url
    app.conf.broker_connection_timeout = 2
    app.conf.broker_connection_retry_on_startup = False
    # Forget any connection pool made before the URL changed (none, normally).
    app._pool = None
    app.amqp._producer_pool = None
    return app


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's standalone S3 server over HTTP on 127.0.0.1 (visible to worker processes), one private bucket."""
    with moto_server() as endpoint_url:
        s3 = S3Server(endpoint_url)
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3


@pytest.fixture(scope="session")
def test_database_url(django_db_setup: None, django_db_blocker: Any) -> str:
    """A URL for the test database that another process can open (the SQLite file, or PostgreSQL)."""
    from django.db import connection

    with django_db_blocker.unblock():
        params = connection.settings_dict
        if params["ENGINE"] == "django.db.backends.sqlite3":
            return f"sqlite:///{params['NAME']}"
        return (
            f"postgres://{params['USER']}:{params['PASSWORD']}@{params['HOST'] or 'localhost'}:"
            f"{params['PORT'] or 5432}/{params['NAME']}"
        )


@pytest.fixture(scope="session")
def s3_worker(
    test_database_url: str, redis_url: str, s3_server: S3Server, model_cache_dir: Path, celery_app_on_test_redis: Any
) -> Iterator[WorkerProcess]:
    """A Celery worker process on the `reconstruct` queue: the test database, the test Redis, S3 on moto."""
    env = worker_environment(s3_server, test_database_url, redis_url, model_cache_dir / "worker")
    worker = start_worker("reconstruct", env, name="test-reconstruct")
    yield worker
    stop_worker(worker)


@pytest.fixture
def on_s3(settings: Any, s3_server: S3Server) -> S3Server:
    """This test stores through S3 (moto over HTTP), like the worker; pages may reach it (what settings.py
    adds to the Content-Security-Policy for AWS_S3_ENDPOINT_URL)."""
    settings.STORAGES = s3_server.storages()
    directives = settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]
    for name in settings.CSP_S3_DIRECTIVES:
        directives = {**directives, name: [*directives[name], s3_server.endpoint_url]}
    settings.CONTENT_SECURITY_POLICY = {**settings.CONTENT_SECURITY_POLICY, "DIRECTIVES": directives}
    return s3_server


# --- Chromium for the browser tests (tests/reconstruct, tests/curation) ----------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed (make test installs it: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread, which makes Django refuse ORM calls
    # (the tests' own and the database flush after each test); they are plain synchronous code here.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield chromium
        chromium.close()
    if previous is None:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
