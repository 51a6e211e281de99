"""No job lost, none stuck, none done twice: a worker killed mid-job, a broker that is down or hung, the sweep
(reconstruct/services/recovery.py), and the same retry on the page and in the API. Real Redis servers and real
Celery worker processes; files on S3 over HTTP (moto)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from reconstruct.models import Reconstruction
from reconstruct.registry.services import model_version_ensure_active
from reconstruct.services.reconstructions import reconstruction_create, reconstruction_run
from reconstruct.services.recovery import reconstruction_sweep
from reconstruct.services.tokens import api_token_regenerate
from reconstruct.tasks import reconstruction_sweep_event
from tests.support import (
    S3Server,
    WorkerProcess,
    moto_server,
    redis_server,
    start_worker,
    stop_worker,
    upload,
    worker_environment,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

API = "/api/reconstructions/"
QUEUE = "reconstruct"  # the Redis list that holds the reconstruct queue's messages


@contextlib.contextmanager
def broker(app: Any, url: str) -> Iterator[None]:
    """The Celery app publishes to ``url`` inside the block (fresh connections), and to its old broker after."""
    previous = app.conf.broker_url

    def point(to: str) -> None:
        # Only the references: kombu keeps one pool per broker URL for the process, and a closed one stays closed.
        app.conf.broker_url = to
        app._pool = None
        app.amqp._producer_pool = None

    point(url)
    try:
        yield
    finally:
        point(previous)


def queued_ids(url: str) -> list[int]:
    """The reconstruction ids waiting in the reconstruct queue of the Redis at ``url`` (Celery's message
    protocol 2: a JSON envelope whose base64 body is ``[args, kwargs, embed]``)."""
    messages = redis.Redis.from_url(url).lrange(QUEUE, 0, -1)
    return [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in messages]


def wait_until_finished(pk: int, worker: WorkerProcess, timeout: float = 90) -> Reconstruction:
    deadline = time.monotonic() + timeout
    while not (row := Reconstruction.objects.get(pk=pk)).is_finished:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)
    return row


def kill_worker(pid: int) -> None:
    """SIGKILL a Celery worker and its pool processes at once, as the kernel's OOM killer or a crash would."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for process in [*map(int, children), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signal.SIGKILL)


def post(client: Client, token: str, content: bytes) -> Any:
    return client.post(API, {"image": upload(content, "car.png")}, HTTP_AUTHORIZATION=f"Token {token}")


@pytest.fixture
def own_broker(settings: Any, celery_app_on_test_redis: Any, tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own (no session worker consumes from it), where reconstructions are queued."""
    settings.RECONSTRUCT_MODE = "celery"
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as url, broker(celery_app_on_test_redis, url):
        yield url


def test_it_runs_a_job_once_after_its_worker_was_killed_mid_job(
    own_broker: str, on_s3: S3Server, settings: Any, test_database_url: str, tmp_path: Path, alice, car_png
):
    # An empty model cache: the first job downloads the model, so it is surely mid-job when killed.
    env = worker_environment(on_s3, test_database_url, own_broker, tmp_path / "models")
    doomed = start_worker("reconstruct", env, name="doomed")
    try:
        reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
        deadline = time.monotonic() + 60
        while Reconstruction.objects.get(pk=reconstruction.pk).status != "running":
            assert time.monotonic() < deadline, doomed.log()
            time.sleep(0.01)
        kill_worker(doomed.process.pid)
        doomed.process.wait(10)
    finally:
        stop_worker(doomed)
    row = Reconstruction.objects.get(pk=reconstruction.pk)
    assert (row.status, row.attempts) == ("running", 1), "the worker finished before it was killed"

    # A minute later the sweep finds a job running longer than any job may, and queues it again.
    settings.RECONSTRUCT_STUCK_AFTER = 1
    Reconstruction.objects.filter(pk=row.pk).update(started_at=timezone.now() - timedelta(seconds=5))
    assert reconstruction_sweep().requeued == [row.pk]
    assert reconstruction_sweep().requeued == []  # pending again, queued: nothing more to do

    survivor = start_worker("reconstruct", {**env, "MODEL_CACHE_DIR": str(tmp_path / "models-2")}, name="survivor")
    try:
        row = wait_until_finished(row.pk, survivor)
    finally:
        stop_worker(survivor)
    assert (row.status, row.attempts, row.error) == ("done", 2, "")
    prefix = f"reconstructions/{alice.pk}/{row.uuid}/"
    # One result: nothing left of the killed attempt, every stored file referenced by the row.
    assert on_s3.keys(prefix) == sorted(row.file_keys())
    assert {row.model_input.name, row.reconstruction.name} == {
        prefix + "model_input.png",
        prefix + "reconstruction.png",
    }
    # Its old message, if Redis ever hands it back, finds the job done and changes nothing.
    finished_at = row.finished_at
    reconstruction_run(row.pk)
    assert Reconstruction.objects.get(pk=row.pk).finished_at == finished_at


def test_it_fails_a_job_with_a_reason_after_its_last_interrupted_attempt(settings: Any, alice, car_png):
    settings.RECONSTRUCT_STUCK_AFTER = 1
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    long_ago = timezone.now() - timedelta(minutes=10)
    Reconstruction.objects.filter(pk=reconstruction.pk).update(
        status="running", attempts=settings.RECONSTRUCT_MAX_ATTEMPTS, started_at=long_ago
    )
    assert reconstruction_sweep().failed == [reconstruction.pk]
    row = Reconstruction.objects.get(pk=reconstruction.pk)
    assert row.status == "failed" and "interrupted 3 times" in row.error

    # The API offers the page's "Try again".
    client = Client()
    token = api_token_regenerate(alice)
    data = client.get(f"{API}{row.uuid}/", HTTP_AUTHORIZATION=f"Token {token}").json()
    assert data["retry_url"] == f"http://testserver{API}{row.uuid}/retry/"
    retried = client.post(data["retry_url"], HTTP_AUTHORIZATION=f"Token {token}")
    assert retried.status_code == 201 and retried.json()["status"] == "done"  # sync mode: run in the request
    again = client.post(data["retry_url"], HTTP_AUTHORIZATION=f"Token {token}")
    assert again.status_code == 409 and again.json()["code"] == "not_retryable"


def test_on_lambda_the_scheduled_sweep_runs_a_job_its_request_left_running(settings: Any, alice, car_png):
    settings.RECONSTRUCT_STUCK_AFTER = 1
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))  # sync mode, as on Lambda
    Reconstruction.objects.filter(pk=reconstruction.pk).update(
        status="running", attempts=1, started_at=timezone.now() - timedelta(minutes=1), finished_at=None
    )
    assert reconstruction_sweep_event({"detail-type": "Scheduled Event"}, None) == {
        "requeued": [reconstruction.pk],
        "failed": [],
    }
    row = Reconstruction.objects.get(pk=reconstruction.pk)
    assert (row.status, row.attempts) == ("done", 2)


def test_the_api_offers_the_pages_retry_for_a_stuck_job(settings: Any, alice, car_png):
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    Reconstruction.objects.filter(pk=reconstruction.pk).update(
        status="running", started_at=timezone.now() - timedelta(seconds=settings.RECONSTRUCT_STUCK_AFTER + 5)
    )
    client = Client()
    token = api_token_regenerate(alice)
    data = client.get(f"{API}{reconstruction.uuid}/", HTTP_AUTHORIZATION=f"Token {token}").json()
    assert data["stuck"] is True and data["retry_url"]
    client.force_login(alice)
    page = client.get(f"/r/{reconstruction.uuid}/")
    assert b"Queue it again" in page.content


@pytest.mark.parametrize("outage", ["stopped", "paused"])
def test_it_keeps_an_upload_while_the_broker_is_out_and_queues_it_when_back(
    outage: str, settings: Any, celery_app_on_test_redis: Any, tmp_path: Path, alice, car_png
):
    settings.RECONSTRUCT_MODE = "celery"
    settings.RECONSTRUCT_REQUEUE_AFTER = 0
    client = Client()
    token = api_token_regenerate(alice)
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with redis_server(tmp_path / "first") as url, broker(celery_app_on_test_redis, url):
        server_pid = int(redis.Redis.from_url(url).info("server")["process_id"])
        if outage == "paused":
            os.kill(server_pid, signal.SIGSTOP)  # accepts connections, never answers
        else:
            redis.Redis.from_url(url).shutdown(nosave=True)
        try:
            started = time.monotonic()
            response = post(client, token, car_png)
            waited = time.monotonic() - started
        finally:
            if outage == "paused":
                os.kill(server_pid, signal.SIGCONT)
        # Not a hang: the broker's connect or command timeout (3 s) ended the wait.
        assert waited < 30
        assert response.status_code == 202, response.content
        assert response.json()["status"] == "pending"
        row = Reconstruction.objects.get(uuid=response.json()["id"])
        assert (row.status, row.queued_at, row.error) == ("pending", None, "")

        if outage == "paused":
            back = url
            assert reconstruction_sweep().requeued == [row.pk]
            assert queued_ids(back) == [row.pk]
        else:
            with redis_server(tmp_path / "second") as back, broker(celery_app_on_test_redis, back):
                assert reconstruction_sweep().requeued == [row.pk]
                assert queued_ids(back) == [row.pk]
    row.refresh_from_db()
    assert row.status == "pending" and row.queued_at is not None
    assert reconstruction_sweep().requeued == []


def test_a_hung_broker_costs_an_upload_one_timeout_and_a_dropped_connection_is_reopened(
    settings: Any, celery_app_on_test_redis: Any, tmp_path: Path, alice, car_png
):
    """A web process's kept broker connection, then Redis hangs: the upload waits one broker timeout, not three
    (the command, the reconnect's handshake and the retry each timed out: 9 s). A connection the server dropped
    (Redis restarted) is still reopened and the job queued within the same upload."""
    settings.RECONSTRUCT_MODE = "celery"
    timeout = settings.RECONSTRUCT_BROKER_TIMEOUT
    client = Client()
    token = api_token_regenerate(alice)
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as url, broker(celery_app_on_test_redis, url):
        admin = redis.Redis.from_url(url)
        assert post(client, token, car_png).json()["queued_at"] is not None  # the pool's connection is open now
        server_pid = int(admin.info("server")["process_id"])
        os.kill(server_pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = post(client, token, car_png)
            waited = time.monotonic() - started
        finally:
            os.kill(server_pid, signal.SIGCONT)
        assert response.status_code == 202 and response.json()["queued_at"] is None, response.content
        assert timeout <= waited < 2 * timeout, waited

        admin.client_kill_filter(_type="normal", skipme=True)  # every connection but this one, as a restart would
        response = post(client, token, car_png)
        assert response.status_code == 202 and response.json()["queued_at"] is not None, response.content
        last = Reconstruction.objects.get(uuid=response.json()["id"]).pk
        # The hung one is there too: Redis read its command when it went on (its row's queued_at stays null, and
        # the sweep's later publish is harmless: the first worker to claim the row runs it, the other finds it taken).
        assert last in queued_ids(url)


@pytest.mark.parametrize("form", [False, True], ids=["api-wait", "form"])
def test_an_upload_that_could_not_be_queued_does_not_wait_for_its_result(
    form: bool, settings: Any, celery_app_on_test_redis: Any, tmp_path: Path, alice, car_png
):
    """POST ?wait= and the upload form wait for the job only once it is queued: with Redis down it is not, and
    nothing can finish it meanwhile (it used to wait out the whole wait, on top of the broker's timeouts)."""
    settings.RECONSTRUCT_MODE = "celery"
    settings.RECONSTRUCT_UPLOAD_WAIT = 25
    client = Client()
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as url, broker(celery_app_on_test_redis, url):
        redis.Redis.from_url(url).shutdown(nosave=True)
        started = time.monotonic()
        if form:
            client.force_login(alice)
            response = client.post(reverse("reconstruct:upload"), {"image": upload(car_png, "car.png")})
            assert response.status_code == 302, response.content
            row = Reconstruction.objects.get()
            page = client.get(response["Location"]).content.decode()
            # Says what happened: not "waiting for a worker", and never a hint that the worker is missing.
            assert "Not in the queue yet" in page and "queued by itself once the queue answers" in page
            assert "Waiting for a worker" not in page
        else:
            token = api_token_regenerate(alice)
            response = client.post(
                "/api/reconstructions/?wait=25",
                {"image": upload(car_png, "car.png")},
                HTTP_AUTHORIZATION=f"Token {token}",
            )
            assert response.status_code == 202 and response.json()["status"] == "pending", response.content
            assert response.json()["queued_at"] is None  # the queue did not take it
            row = Reconstruction.objects.get(uuid=response.json()["id"])
        waited = time.monotonic() - started
    assert (row.status, row.queued_at) == ("pending", None)  # kept, for the sweep to queue
    assert waited < 20, waited  # the broker's refusal, not the 25 s wait


def test_it_retries_a_job_while_the_storage_is_down_then_fails_it_readably_and_retries_once_back(
    own_broker: str, settings: Any, test_database_url: str, tmp_path: Path, alice, car_png
):
    with moto_server() as endpoint:
        s3 = S3Server(endpoint, bucket="carsite-outage")
        s3.client().create_bucket(Bucket=s3.bucket)
        settings.STORAGES = s3.storages()
        model_version_ensure_active()  # registered while the storage answers
        reconstruction = reconstruction_create(user=alice, upload=upload(car_png))  # queued; no worker yet
    # The S3 server is stopped now. The worker retries (0.5 s, then 1.5 s later), then fails the job with a reason.
    env = worker_environment(s3, test_database_url, own_broker, tmp_path / "models")
    env |= {"RECONSTRUCT_STORAGE_RETRIES": "2", "RECONSTRUCT_STORAGE_RETRY_DELAY": "0.5", "AWS_S3_TIMEOUT": "2"}
    worker = start_worker("reconstruct", env, name="storage-outage")
    try:
        row = wait_until_finished(reconstruction.pk, worker)
        assert row.status == "failed" and "file storage did not answer" in row.error, row.error
        assert row.attempts == 1  # the retries while the storage was down do not count as attempts
        assert worker.log().count("Retry in") == 2, worker.log()

        with moto_server(port=int(endpoint.rsplit(":", 1)[1])):  # the storage is back, with its objects
            client = Client()
            token = api_token_regenerate(alice)
            retried = client.post(f"{API}{row.uuid}/retry/", HTTP_AUTHORIZATION=f"Token {token}")
            # Queued again (the waiting worker may have taken it already by the time the answer is written).
            assert retried.status_code == 202 and retried.json()["status"] in ("pending", "running")
            row = wait_until_finished(row.pk, worker)
            assert (row.status, row.error) == ("done", "")
            assert s3.keys(f"reconstructions/{alice.pk}/{row.uuid}/") == sorted(row.file_keys())
    finally:
        stop_worker(worker)


def test_it_answers_503_and_keeps_nothing_when_the_storage_is_down_at_upload(settings: Any, alice, car_png):
    with moto_server() as endpoint:
        s3 = S3Server(endpoint, bucket="carsite-outage")
        s3.client().create_bucket(Bucket=s3.bucket)
        settings.STORAGES = s3.storages()
    client = Client()
    token = api_token_regenerate(alice)
    response = post(client, token, car_png)
    assert response.status_code == 503 and response.json()["code"] == "storage_unavailable"
    assert response["Retry-After"] == "60"
    assert not Reconstruction.objects.exists()


def test_the_broker_s_channel_keeps_one_redis_client_per_pool(celery_app_on_test_redis: Any, redis_url: str) -> None:
    """carsite/redis_transport.py: a publish and an acknowledgement reuse the channel's redis-py client."""
    import redis

    from carsite.redis_transport import Channel

    with celery_app_on_test_redis.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        client = channel._create_client()
        assert channel._create_client() is client and client.connection_pool is channel.pool
        assert channel._create_client(asynchronous=True) is not client  # the consumer's own, as kombu makes it
        with connection.Producer() as producer:
            producer.publish({"n": 1}, routing_key="carsite-test-client", declare=[], serializer="json")
        assert channel._create_client() is client
        assert redis.Redis.from_url(redis_url).llen("carsite-test-client") == 1
        redis.Redis.from_url(redis_url).delete("carsite-test-client")
        channel._pool = None  # a new pool (kombu makes one again after a reconnect): a new client on it
        assert channel._create_client() is not client
        assert channel._create_client().connection_pool is channel.pool
