"""Shared fixtures: a temporary media root, users alice and bob, small drawn pictures, and the real
services the integration and browser tests run against (redis-server, a Celery worker process,
moto's S3 server over HTTP). Nothing here reads ../shared: every picture is drawn with Pillow."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
S3_REGION = "us-east-1"
S3_BUCKET = "carsite-test-media"


# --- Settings for every test ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: Any) -> None:
    """SQLite test databases live in a file (not in memory) so a worker process can share them."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


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

PASSWORD = "correct-horse-battery-9"


@pytest.fixture
def alice(db: None) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def bob(db: None) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)


# --- Pictures -------------------------------------------------------------------------------------------


def draw_car(
    size: tuple[int, int] = (240, 120), body: tuple[int, int, int] = (200, 40, 40), mode: str = "RGB"
) -> Image.Image:
    """A "car": a coloured body with a cabin and two dark wheels on a light background (2:1 by default)."""
    background = (232, 234, 238, 255) if mode == "RGBA" else (232, 234, 238)
    image = Image.new(mode, size, background)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle((w // 10, h * 2 // 5, w * 9 // 10, h * 3 // 4), fill=body)
    draw.rectangle((w // 4, h // 6, w * 5 // 8, h * 2 // 5), fill=tuple(c // 2 for c in body))
    for cx in (w // 4, w * 3 // 4):
        draw.ellipse((cx - h // 7, h * 5 // 8, cx + h // 7, h * 7 // 8), fill=(20, 20, 20))
    return image


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


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
            if pixels[x, y] == (232, 234, 238, 255):
                pixels[x, y] = (0, 0, 0, 0)
    return encode(image, "PNG")


@pytest.fixture(scope="session")
def not_an_image() -> bytes:
    return b"%PDF-1.4\nthis is not a picture of a car\n" * 20


def upload(content: bytes, name: str = "car.png") -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content)


# --- Real services: Redis, moto's S3 server, a Celery worker process -------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port} within {timeout} s")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, in its own folder, for the whole session."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.fail("redis-server is not installed (make test installs it: apt-get install -y redis-server)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


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


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str = S3_BUCKET

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=S3_REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def environment(self) -> dict[str, str]:
        """What a process needs in its environment to store through this server (settings.py reads it)."""
        return {
            "AWS_STORAGE_BUCKET_NAME": self.bucket,
            "AWS_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_S3_REGION_NAME": S3_REGION,
            "AWS_S3_ADDRESSING_STYLE": "path",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }

    def storages(self) -> dict[str, Any]:
        """The STORAGES setting settings.py builds from environment()."""
        return {
            "default": {
                "BACKEND": "storages.backends.s3.S3Storage",
                "OPTIONS": {
                    "bucket_name": self.bucket,
                    "endpoint_url": self.endpoint_url,
                    "region_name": S3_REGION,
                    "access_key": "testing",
                    "secret_key": "testing",
                    "querystring_auth": True,
                    "file_overwrite": False,
                    "signature_version": "s3v4",
                    "addressing_style": "path",
                },
            },
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's standalone S3 server over HTTP on 127.0.0.1 (visible to worker processes), one private bucket."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    s3.client().create_bucket(Bucket=s3.bucket)
    try:
        yield s3
    finally:
        server.stop()


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.output[-80:])


WORKER_OPTIONS = ("-c", "1", "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO")


def start_worker(queues: str, env: dict[str, str], name: str, timeout: float = 60.0) -> WorkerProcess:
    """`celery -A carsite worker` in a subprocess; returns once it says it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "carsite", "worker", "-Q", queues, "-n", f"{name}@%h", *WORKER_OPTIONS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker = WorkerProcess(process)
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            worker.output.append(line)
            if " ready." in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the Celery worker did not start:\n{worker.log()}")
    return worker


def stop_worker(worker: WorkerProcess) -> None:
    worker.process.terminate()
    try:
        worker.process.wait(20)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait()


@pytest.fixture(scope="session")
def worker_control() -> tuple[Any, Any]:
    """``(start_worker, stop_worker)`` for tests in other folders (conftest modules are not importable)."""
    return start_worker, stop_worker


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
    env = {
        **os.environ,
        **s3_server.environment(),
        "DATABASE_URL": test_database_url,
        "CELERY_BROKER_URL": redis_url,
        "MODEL_CACHE_DIR": str(model_cache_dir / "worker"),
        "RECONSTRUCT_MODE": "celery",
        "PYTHONUNBUFFERED": "1",
    }
    worker = start_worker("reconstruct", env, name="test-reconstruct")
    yield worker
    stop_worker(worker)


@pytest.fixture
def on_s3(settings: Any, s3_server: S3Server) -> S3Server:
    """This test stores through S3 (moto over HTTP), like the worker."""
    settings.STORAGES = s3_server.storages()
    return s3_server
