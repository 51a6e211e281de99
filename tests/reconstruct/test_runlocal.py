"""`make run`'s supervisor (python manage.py runlocal): the whole stack comes up from nothing, the
demo account can log in and reconstruct through the queue, and Ctrl-C stops every process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, PortTaken, draw_car, encode, on_some_port

pytestmark = pytest.mark.integration

# runlocal's own words when a port it wants is taken (its check, Granian's bind, redis-server's bind).
PORT_TAKEN = ("is in use", "Connection in use", "Address already in use")


def start_runlocal(port: int, env: dict[str, str]) -> tuple[subprocess.Popen, list[str], int]:
    """`manage.py runlocal` serving on ``port``, once its banner is out and Granian listens there. runlocal
    cannot bind port 0 and report the port it got; PortTaken when another process took ``port`` first."""
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runlocal", "--port", str(port), "--no-training-worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    listening = f"Listening at: http://127.0.0.1:{port}\n"  # Granian's own line: it is this process serving
    deadline = time.monotonic() + 120
    while not ("Press Ctrl-C to stop" in (log := "".join(output)) and listening in log):
        taken = any(words in log for words in PORT_TAKEN)
        if taken or process.poll() is not None or time.monotonic() > deadline:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            reader.join(5)
            log = "".join(output)
            if any(words in log for words in PORT_TAKEN):
                raise PortTaken(log)
            raise AssertionError(log)
        time.sleep(0.2)
    return process, output, port


def reconstruct_once(session: requests.Session, base: str) -> dict:
    """Upload a drawn car through the API with the logged-in ``session``; its status once finished."""
    photo = encode(draw_car((400, 200)), "JPEG")
    created = session.post(
        f"{base}/api/reconstructions/",
        files={"image": ("car.jpg", photo, "image/jpeg")},
        headers={"X-CSRFToken": session.cookies["csrftoken"]},
        timeout=30,
    )
    assert created.status_code == 202, created.text
    deadline = time.monotonic() + 90
    while (status := session.get(created.json()["status_url"], timeout=10).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    return status


def test_it_starts_the_stack_reconstructs_restarts_a_dead_worker_and_stops_cleanly(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL")},
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "MODEL_CACHE_DIR": str(tmp_path / "models"),
        "CARSITE_RUN_DIR": str(tmp_path / "run"),
        "WORKER_CONCURRENCY": "1",
        "RECONSTRUCT_SWEEP_INTERVAL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    process, output, port = on_some_port(lambda port: start_runlocal(port, env))
    try:
        log = "".join(output)
        login = re.search(r"Demo account: username (\S+), password (\S+) ", log)
        assert login, log
        base = f"http://127.0.0.1:{port}"
        redis_port = int(re.search(r"Queue: redis://127\.0\.0\.1:(\d+)/0", log).group(1))

        session = requests.Session()
        session.get(f"{base}/accounts/login/", timeout=10)
        response = session.post(
            f"{base}/accounts/login/",
            data={"username": login[1], "password": login[2], "csrfmiddlewaretoken": session.cookies["csrftoken"]},
            timeout=10,
        )
        assert response.url.endswith("/reconstruct/"), response.text[:500]
        assert reconstruct_once(session, base)["status"] == "done"
        # A visitor's 4xx (an unshared link, a page that does not exist, the API without a token) is in the
        # access log with its status, not also as a WARNING: it is not the person running the site's to act on.
        assert session.get(f"{base}/s/{'x' * 43}/", timeout=10).status_code == 404
        assert requests.get(f"{base}/api/reconstructions/", timeout=10).status_code == 401

        # A worker killed outright is started again (the log says so) and the site keeps working.
        worker_pid = int(re.search(r"\[runlocal\] worker started \(pid (\d+)\)", log).group(1))
        os.kill(worker_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(re.findall(r"\[runlocal\] worker started", "".join(output))) < 2:
            assert time.monotonic() < deadline, "".join(output[-30:])
            time.sleep(0.2)
        assert "worker stopped unexpectedly (exit code -9); starting it again in 1 s" in "".join(output)
        assert process.poll() is None
        status = reconstruct_once(session, base)
        assert status["status"] == "done", status["error"]
        # Celery beat sends the sweep of orphaned jobs, and the worker runs it.
        deadline = time.monotonic() + 60
        while not re.search(r"Task reconstruct\.tasks\.reconstruction_sweep_task\[\S+\] succeeded", "".join(output)):
            assert time.monotonic() < deadline, "".join(output[-30:])
            time.sleep(0.2)
        # Later sweeps that found nothing (every 2 s here) are not printed: only the first round is.
        time.sleep(5)
        assert len(re.findall(r"Sending due task reconstruction-sweep", "".join(output))) == 1
        assert len(re.findall(r"reconstruction_sweep_task\[\S+\] succeeded", "".join(output))) == 1
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    assert code == 0, "".join(output[-30:])
    assert "Stopped." in "".join(output)
    # Every line is one a newcomer needs: no warning that is not theirs to act on (Celery's against root, Redis's
    # memory overcommit, a task's output logged as WARNING), nor Granian's bookkeeping.
    # Nor Celery beat's 12-line banner (the site's own banner says what runs).
    unwanted = r"WARNING|Warning|overcommit|Spawning worker-|see ya|oO0OoO0OoO0Oo|Configuration ->|beat v\d"
    noise = [line for line in output if re.search(unwanted, line)]
    assert noise == []
    assert [line for line in output if re.fullmatch(r"\[\w+\]\s*", line)] == []  # no bare "[worker] " lines
    for stopped in (port, redis_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", stopped), timeout=2).close()


def test_it_serves_the_site_with_granian_on_the_address_given() -> None:
    from reconstruct.management.commands.runlocal import default_web_processes, web_server_args

    args = web_server_args("127.0.0.1", 8001, 3)
    assert args[1:3] == ["-m", "granian"] and args[-1] == "carsite.wsgi:application"
    assert args[args.index("--interface") + 1] == "wsgi"
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--port") + 1] == "8001"
    assert args[args.index("--workers") + 1] == "3" and args[args.index("--blocking-threads") + 1] == "32"
    ipv6 = web_server_args("::1", 8000, 1)
    assert ipv6[ipv6.index("--host") + 1] == "::1"
    # One process per two CPUs (the Celery workers take the rest), at least one.
    assert [default_web_processes(cpus) for cpus in (1, 2, 3, 4, 16)] == [1, 1, 1, 2, 8]


def test_its_banner_shows_the_demo_password_only_while_it_still_works(db, tmp_path) -> None:
    from django.contrib.auth import get_user_model

    from reconstruct.management.commands.runlocal import Command

    first = Command()._demo_account(tmp_path)
    password = first.rsplit("password ", 1)[1]
    demo = get_user_model().objects.get(username="demo")
    assert demo.is_staff and demo.check_password(password)
    assert Command()._demo_account(tmp_path) == first
    demo.set_password("changed-by-its-owner-1")
    demo.save()
    assert "password changed since" in Command()._demo_account(tmp_path)


def test_it_stops_every_child_at_once_and_redis_after_the_others_have_exited(tmp_path: Path) -> None:
    # Real processes that, like gunicorn and Celery, take a moment to finish after SIGTERM, and write down when
    # they were asked and when they were done. Redis must be asked only after every other child has exited (the
    # workers acknowledge their last job there); the others are all asked before any of them has finished.
    from reconstruct.management.commands.runlocal import Child, stop_children

    def child(name: str) -> Child:
        script = (
            f'trap \'echo "$(date +%s.%N) asked" >> {tmp_path}/{name}; sleep 1; '
            f'echo "$(date +%s.%N) done" >> {tmp_path}/{name}; exit 0\' TERM; '
            f"touch {tmp_path}/{name}.ready; while true; do sleep 0.05; done"
        )
        return Child(name, ["bash", "-c", script], dict(os.environ))

    children = [child(name) for name in ("redis", "worker", "beat", "web")]
    for each in children:
        each.start(sys.stdout)
    for each in children:
        deadline = time.monotonic() + 10
        while not (tmp_path / f"{each.name}.ready").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    stop_children(children)
    assert all(each.process.poll() == 0 for each in children)
    events = {
        name: dict(reversed(line.split()) for line in (tmp_path / name).read_text().splitlines())
        for name in ("redis", "worker", "beat", "web")
    }
    others = [events[name] for name in ("worker", "beat", "web")]
    assert max(float(e["asked"]) for e in others) < min(float(e["done"]) for e in others)
    assert float(events["redis"]["asked"]) > max(float(e["done"]) for e in others)


def test_it_never_uses_a_redis_that_took_its_port_first(redis_url: str) -> None:
    # Another redis-server answers on the port runlocal chose (it took the port between the choice and our own
    # redis-server's bind, which then fails): runlocal stops with a clear error instead of queuing jobs there.
    from django.core.management.base import CommandError

    from reconstruct.management.commands.runlocal import Child, Command

    ours = Child("redis", ["sleep", "30"], dict(os.environ))  # alive, but not the server that answers
    ours.start(sys.stdout)
    try:
        with pytest.raises(CommandError, match=r"is in use by another redis-server \(pid \d+\)"):
            Command()._wait_for_redis(redis_url, ours)
    finally:
        ours.stop()
