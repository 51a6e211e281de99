"""What tests in every folder share, imported as ``from tests.support import ...`` (conftest.py files hold
only fixtures): the named users' password, one drawn car, uploads, and the real servers the integration,
browser and Lambda tests run against (redis-server, moto's S3 server, a PostgreSQL cluster, Celery workers).

Servers never get a port that was chosen, released and then bound again by someone else: moto's server
binds port 0 and reports the port it got; redis-server and PostgreSQL cannot (``--port 0`` means "no TCP"
to redis-server, PostgreSQL's lowest port is 1), so they start on a port nothing listens on and start
again on another one if the chosen port was taken meanwhile (``on_some_port``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# --- Users --------------------------------------------------------------------------------------------

PASSWORD = "correct-horse-battery-9"


def make_user(name: str, staff: bool = False) -> Any:
    """A user ``name`` (email name@example.com, password PASSWORD); ``staff`` makes a superuser."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(
        name, f"{name}@example.com", PASSWORD, **({"is_staff": True, "is_superuser": True} if staff else {})
    )


# --- Pictures -------------------------------------------------------------------------------------------

BACKGROUND = (232, 234, 238)  # behind a car drawn without a seed
RED = (200, 40, 40)  # the body of a car drawn without a seed, unless given


def draw_car(
    size: tuple[int, int] = (240, 120),
    body: tuple[int, int, int] | None = None,
    *,
    seed: int | None = None,
    facing_left: bool = True,
    grey: bool = False,
    mode: str = "RGB",
) -> Image.Image:
    """A "car" seen from the side: a body, a cabin over its front half and two dark wheels (2:1 by default).

    Without a seed it stands on the plain BACKGROUND, RED unless ``body`` is given. With a seed the background
    is a random colour with six random blocks, and the body a random colour (unless given): the blocks make each
    seed's perceptual hash differ clearly from every other seed's, as different photos do. The same arguments
    always draw the same picture. ``facing_left=False`` puts the cabin over the right half; ``grey`` draws it
    in shades of grey; ``mode="RGBA"`` gives an opaque picture with an alpha channel."""
    rng = np.random.default_rng(seed) if seed is not None else None
    w, h = size
    background = BACKGROUND if rng is None else tuple(int(c) for c in rng.integers(150, 256, 3))
    image = Image.new(mode, size, (*background, 255) if mode == "RGBA" else background)
    draw = ImageDraw.Draw(image)
    if rng is not None:
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.rectangle(
                (x0, y0, x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))), fill=colour
            )
        random_body = tuple(int(c) for c in rng.integers(0, 256, 3))
        body = body or random_body
    body = body or RED
    draw.rectangle((w // 10, h * 2 // 5, w * 9 // 10, h * 3 // 4), fill=body)
    cabin = (w // 6, h // 6, w // 2, h * 2 // 5) if facing_left else (w // 2, h // 6, w * 5 // 6, h * 2 // 5)
    draw.rectangle(cabin, fill=body)
    for cx in (w // 4, w * 3 // 4):
        draw.ellipse((cx - h // 7, h * 5 // 8, cx + h // 7, h * 7 // 8), fill=(20, 20, 20))
    if grey:
        image = image.convert("L").convert(mode)
    return image


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    """The picture as a file in ``fmt`` ("JPEG", "PNG", ...), with Pillow's save ``options`` (quality=...)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def resave(data: bytes, scale: float = 0.5, quality: int = 70) -> bytes:
    """The same photo resized and recompressed: a near duplicate with different bytes."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
    return encode(image, "JPEG", quality=quality)


def upload(content: bytes, name: str = "car.png") -> Any:
    """``content`` as a file a form received."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content)


# --- Ports --------------------------------------------------------------------------------------------


class PortTaken(RuntimeError):
    """A server could not bind the port it was given: another process took it after it was chosen."""


def _unused_port() -> int:
    """A loopback port nothing listens on at this moment (only a candidate: see on_some_port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on_some_port(start: Callable[[int], T], attempts: int = 5) -> T:
    """``start(port)`` on a port nothing listens on, again on another port while it raises PortTaken.

    For servers that cannot bind port 0 and report the port they got: between choosing a port and the
    server binding it another process may take it, and then the server starts again elsewhere."""
    for _ in range(attempts - 1):
        with contextlib.suppress(PortTaken):
            return start(_unused_port())
    return start(_unused_port())


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where connections are refused: this process holds it (bound, not listening), so no
    other process can start listening there while the block runs."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port} within {timeout} s")


# --- Processes that say when they are ready ---------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A server or worker process, with everything it printed so far (stdout and stderr)."""

    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.output[-80:])

    def stop(self, timeout: float = 20) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _start_until_ready(args: list[str], ready: str, timeout: float, **popen: Any) -> WorkerProcess:
    """Start ``args``; return once a line of its output contains ``ready``. If it exits or times out first it
    is stopped, and PortTaken ("Address already in use" in its output) or RuntimeError raised."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    started = WorkerProcess(process)
    said_ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            started.output.append(line)
            if ready in line:
                said_ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not said_ready.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            started.stop(timeout=5)
            reader.join(5)
            if "Address already in use" in started.log():
                raise PortTaken(f"{args[0]}: {started.log()}")
            raise RuntimeError(f"{' '.join(args[:6])} did not start:\n{started.log()}")
    return started


# --- Redis -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server on a loopback port, working in ``folder``; yields its URL (redis://127.0.0.1:PORT/0)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.fail("redis-server is not installed (make test installs it: apt-get install -y redis-server)")

    def start(port: int) -> tuple[WorkerProcess, int]:
        args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)]
        args += ["--save", "", "--appendonly", "no", "--logfile", ""]
        return _start_until_ready(args, "Ready to accept connections", timeout=15), port

    server, port = on_some_port(start)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop(timeout=10)


# --- S3: moto's server over HTTP -----------------------------------------------------------------------------

S3_REGION = "us-east-1"
S3_BUCKET = "carsite-test-media"


@contextlib.contextmanager
def moto_server(port: int = 0) -> Iterator[str]:
    """moto's standalone server (S3 and the rest of AWS) over HTTP on 127.0.0.1, on ``port`` or the port the
    system gives it; yields its endpoint URL. Other processes reach it too. Every moto server of this process
    shares one state: a server started again on the same port finds the buckets and objects of the last."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


MOTO_PROCESS_SCRIPT = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("http://%s:%s" % server.get_host_and_port(), flush=True)
sys.stdin.read()
server.stop()
"""


@contextlib.contextmanager
def moto_server_process() -> Iterator[str]:
    """moto_server in a process of its own, so its AWS (functions, roles, APIs, buckets) is this server's alone:
    moto keeps its state per process, and every in-process server shares it. Yields the endpoint URL; the
    process ends when its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", MOTO_PROCESS_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        endpoint_url = process.stdout.readline().strip()  # type: ignore[union-attr]
        if not endpoint_url.startswith("http://"):
            raise RuntimeError(f"moto's server did not start (exit code {process.wait()})")
        yield endpoint_url
    finally:
        stop_by_closing_stdin(process)


def stop_by_closing_stdin(process: subprocess.Popen[Any], timeout: float = 20) -> None:
    """End a helper process that runs until its stdin closes; killed if it is still running after `timeout` s."""
    process.stdin.close()  # type: ignore[union-attr]
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
        from botocore.config import Config

        return {
            "default": {
                "BACKEND": "carsite.media_storage.MediaStorage",
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
                    "client_config": Config(
                        s3={"addressing_style": "path"},
                        signature_version="s3v4",
                        connect_timeout=5,
                        read_timeout=10,
                        retries={"max_attempts": 2, "mode": "standard"},
                    ),
                },
            },
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }


# --- PostgreSQL ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster in a temporary folder (Debian's postgresql; `make test` installs it), on a
    loopback port, with an empty database; yields postgres://carsite@127.0.0.1:PORT/carsite."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not binaries:
        pytest.fail("PostgreSQL is not installed: `make test` installs it (apt-get install postgresql)")
    bindir = binaries[-1].parent
    base = Path(tempfile.mkdtemp(prefix="carsite-pg-"))
    # initdb refuses to run as root: run the server as the postgres user Debian's package creates.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(base, user="postgres", group="postgres")
    data = base / "data"

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True)

    def start(port: int) -> int:
        log = base / f"server-{port}.log"
        options = f"-k {base} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        try:
            # -w: pg_ctl waits until this cluster's own server says it is ready (postmaster.pid), or has exited.
            run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        except subprocess.CalledProcessError as error:
            said = log.read_text(errors="replace") if log.exists() else error.stderr.decode(errors="replace")
            if "Address already in use" in said:
                raise PortTaken(f"PostgreSQL on {port}: {said}") from error
            raise RuntimeError(f"PostgreSQL did not start:\n{said}") from error
        return port

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "carsite", "--auth=trust", "-E", "UTF8", "--no-sync")
        port = on_some_port(start)
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "carsite", "carsite")
            yield f"postgres://carsite@127.0.0.1:{port}/carsite"
        finally:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- Celery workers ---------------------------------------------------------------------------------------

WORKER_OPTIONS = ("-c", "1", "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO")


def start_worker(queues: str, env: dict[str, str], name: str, timeout: float = 60.0) -> WorkerProcess:
    """`celery -A carsite worker` in a subprocess; returns once it says it is ready."""
    args = [sys.executable, "-m", "celery", "-A", "carsite", "worker", "-Q", queues, "-n", f"{name}@%h"]
    try:
        return _start_until_ready([*args, *WORKER_OPTIONS], " ready.", timeout, cwd=ROOT, env=env)
    except RuntimeError as error:
        raise RuntimeError(f"the Celery worker did not start:\n{error}") from None


def worker_environment(s3: S3Server, database_url: str, broker_url: str, model_cache: Path) -> dict[str, str]:
    """The environment of a worker process that shares the test database, stores on ``s3`` and consumes from
    ``broker_url``, with its model cache in ``model_cache``."""
    return {
        **os.environ,
        **s3.environment(),
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "MODEL_CACHE_DIR": str(model_cache),
        "RECONSTRUCT_MODE": "celery",
        "PYTHONUNBUFFERED": "1",
    }


def stop_worker(worker: WorkerProcess) -> None:
    worker.stop(timeout=20)


def run_module_json(*args: str, timeout: float = 240) -> tuple[dict, str]:
    """``python -m <args>`` run from the project's root: asserts it succeeded; returns its last line as JSON, and
    its whole standard output (for an assertion's message)."""
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout
