"""tests/support.py's servers answer on the port they report, even when the port first chosen was taken;
draw_car's seeds draw clearly different pictures."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import redis

from tests import support
from tests.support import S3Server, draw_car, moto_server, postgres_cluster, redis_server, refused_port


@pytest.fixture
def first_port_taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The first port on_some_port chooses is one another process took meanwhile (it listens there)."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        choose = support._unused_port
        chosen = iter([taken])
        monkeypatch.setattr(support, "_unused_port", lambda: next(chosen, None) or choose())
        yield taken


@pytest.mark.integration
def test_it_serves_redis_on_the_port_it_reports(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        assert redis.Redis.from_url(url, socket_connect_timeout=2).ping() is True


@pytest.mark.integration
def test_it_starts_redis_on_another_port_when_the_chosen_one_was_taken(tmp_path: Path, first_port_taken: int) -> None:
    with redis_server(tmp_path) as url:
        assert f":{first_port_taken}/" not in url
        assert redis.Redis.from_url(url, socket_connect_timeout=2).ping() is True


@pytest.mark.integration
def test_it_starts_postgresql_on_another_port_when_the_chosen_one_was_taken(first_port_taken: int) -> None:
    with postgres_cluster() as url, psycopg.connect(url, connect_timeout=5) as connection:
        assert f":{first_port_taken}/" not in url
        assert connection.execute("SELECT current_database()").fetchone() == ("carsite",)


@pytest.mark.integration
def test_it_serves_s3_on_the_port_moto_reports() -> None:
    with moto_server() as endpoint_url:
        assert not endpoint_url.endswith(":0")
        s3 = S3Server(endpoint_url, bucket=f"support-{uuid.uuid4().hex}")  # moto's buckets are per process
        s3.client().create_bucket(Bucket=s3.bucket)
        s3.client().put_object(Bucket=s3.bucket, Key="a/b.txt", Body=b"x")
        assert s3.keys() == ["a/b.txt"]


def test_it_refuses_connections_on_a_refused_port() -> None:
    with refused_port() as port, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_it_draws_a_different_car_for_each_seed_and_the_same_for_the_same_seed() -> None:
    cars = [np.asarray(draw_car((128, 64), seed=seed), dtype=float) for seed in range(8)]
    for i, a in enumerate(cars):
        for b in cars[i + 1 :]:
            assert np.abs(a - b).mean() > 20
    assert np.array_equal(np.asarray(draw_car((128, 64), seed=3)), np.asarray(draw_car((128, 64), seed=3)))


def test_it_draws_the_plain_car_grey_facing_right_and_with_alpha() -> None:
    plain = draw_car()
    assert plain.size == (240, 120) and plain.getpixel((0, 0)) == support.BACKGROUND
    assert plain.getpixel((120, 80)) == support.RED
    grey = np.asarray(draw_car(seed=1, grey=True), dtype=int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    # The cabin sits over the front half: left unless facing right.
    assert draw_car().getpixel((70, 30)) == support.RED and draw_car().getpixel((170, 30)) == support.BACKGROUND
    assert draw_car(facing_left=False).getpixel((170, 30)) == support.RED
    assert draw_car(mode="RGBA").getpixel((0, 0)) == (*support.BACKGROUND, 255)
