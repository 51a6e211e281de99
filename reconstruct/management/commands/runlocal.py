"""python manage.py runlocal: the whole local stack in one terminal (what `make run` calls).

Migrates the database, registers the shipped model, makes sure a demo account exists, then starts
and supervises a Redis server on loopback (own data folder under .run/redis), a Celery worker for
the `reconstruct` queue (plus one for `training` when a task is routed there and torch is
installed), Celery beat (the periodic sweep of orphaned jobs) and the web server. A process that
dies is started again after a back-off (1 s, doubling up to 60 s; back to 1 s once it has run for a
minute), and the log says so: one dead worker does not take the site down. Ctrl-C stops everything,
web server first and Redis last, so a worker can finish its job and nothing queued is lost (Redis
keeps an append-only file).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.staticfiles.finders import get_finders
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from reconstruct.registry.services import model_version_ensure_active

DEMO_USERNAME = "demo"
STOP_TIMEOUT = 20.0
# Restart back-off of a child that died (s): doubled after each restart, reset after a stable minute.
RESTART_DELAY_FIRST = 1.0
RESTART_DELAY_MAX = 60.0
RESTART_STABLE_AFTER = 60.0


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _LIBC = None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: its own session (the terminal's Ctrl-C reaches only the supervisor,
    which stops children in order) and SIGTERM if the supervisor dies, so no orphan keeps a port.
    Only async-signal-safe calls here: the parent has threads."""
    os.setsid()
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# One line a request: when it came, from where, what, the answer, how long it took, and its query string if any.
ACCESS_LOG = '[%(time)s] %(addr)s "%(method)s %(path)s %(protocol)s" %(status)d %(dt_ms).1f ms %(query_string)s'

# Python threads a web process may run: most of them wait, idle, in long-polls (RECONSTRUCT_MAX_WAITING, 28).
WEB_THREADS = 32


def default_web_processes(cpus: int | None = None) -> int:
    """Web server processes when WEB_CONCURRENCY is not set: one per two CPUs, at least one. The Celery workers
    take the other half. On a 2-core machine one process of 32 threads spent 1 to 3 ms less CPU per upload's round
    than two of 16, at the same throughput or more (docs/performance.md, stop 29): one process less sharing the
    cores, one Redis subscription, one set of warm caches."""
    return max(1, (cpus if cpus is not None else os.cpu_count() or 1) // 2)


def web_server_args(host: str, port: int, workers: int, threads: int = WEB_THREADS) -> list[str]:
    """The web server: Granian (HTTP in Rust, the site as a WSGI application), ``workers`` processes of up to
    ``threads`` Python threads each. A status long-poll (``?wait=``) holds a thread while it waits, idle, so there
    are enough for every waiting client; the CPU work runs in the Celery worker. Connections are kept alive
    between requests; a client gets 30 s to send a request's headers (Granian's default) without holding a
    thread meanwhile. A worker that dies is started again. SIGTERM lets requests in flight finish (at most 10 s).
    Against gunicorn (gthread), which it replaced, it spends about 0.35 ms less CPU per request
    (docs/performance.md, stop 29)."""
    return [
        *(sys.executable, "-m", "granian", "--interface", "wsgi", "--no-ws"),
        *("--host", host, "--port", str(port), "--workers", str(workers), "--blocking-threads", str(threads)),
        *("--respawn-failed-workers", "--workers-kill-timeout", "10", "--access-log", "--access-log-fmt", ACCESS_LOG),
        "carsite.wsgi:application",
    ]


# Start-up chatter that tells a newcomer nothing the banner does not (every other line is printed): Redis's
# greeting and its memory-overcommit advice (it concerns forking for snapshots of a large data set; this Redis
# holds a few queued jobs), Granian's worker bookkeeping and its advice against more Python threads than 2 x cores + 1
# (for threads that compute; most of these wait, idle, in a long-poll), each Celery worker's connection (its "ready"
# follows).
CELERY_QUIET = ("celery.worker.consumer.connection: Connected to",)
QUIET_LINES = {
    "worker": CELERY_QUIET,
    "training": CELERY_QUIET,
    "redis": (
        "Redis is starting",
        "Redis version=",
        "Configuration loaded",
        "Server initialized",
        "Memory overcommit must be enabled",
    ),
    "web": (
        "Starting granian",
        "Configuration allows spawning up to",
        "Spawning worker-",
        "Started worker-",
        "Stopping worker-",
        "Stopped worker-",
        "Granian shutdown completed",
    ),
}

# The periodic sweep of orphaned jobs (every RECONSTRUCT_SWEEP_INTERVAL s) that found nothing: beat's send and
# the worker's received/succeeded lines. The first round is printed (it shows the sweep runs), later ones only
# when they requeued or failed a job.
IDLE_SWEEP = re.compile(
    rb"Sending due task reconstruction-sweep|reconstruction_sweep_task\[[^\]]+\] "
    rb"(received|succeeded in [0-9.e-]+s: \{'requeued': \[\], 'failed': \[\]\})"
)

# A visitor's 4xx, which Django logs as a WARNING (django.request; a 5xx is an ERROR and stays): a link made
# private again, a page that does not exist, the API without a token. The web server's access log line shows the same
# request with its status; the person running the site has nothing to act on.
VISITOR_4XX = re.compile(rb" WARNING django\.request: [A-Z][A-Za-z ()]+: /")


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    pump: threading.Thread | None = field(default=None, repr=False)
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None  # when a dead child is due to start again (time.monotonic())
    # The idle sweep's lines already printed, kept across restarts: a worker started again does not repeat them.
    sweep_lines_shown: set[str] = field(default_factory=set, repr=False)

    def start(self, out: Any) -> None:
        self.started_at = time.monotonic()
        self.restart_at = None
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            cwd=settings.BASE_DIR,
        )
        self.pump = threading.Thread(target=self._pump, args=(out,), daemon=True)
        self.pump.start()

    def _pump(self, out: Any) -> None:
        assert self.process is not None and self.process.stdout is not None
        prefix = f"[{self.name}] ".encode()
        quiet = tuple(words.encode() for words in QUIET_LINES.get(self.name, ()))
        sweep_lines_shown = self.sweep_lines_shown
        for line in self.process.stdout:
            if not line.strip():  # Celery's blank line before "Warm shutdown": a bare "[worker] " says nothing
                continue
            if any(words in line for words in quiet) or (self.name == "web" and VISITOR_4XX.search(line)):
                continue
            if IDLE_SWEEP.search(line):
                kind = "received" if b"received" in line else "succeeded" if b"succeeded" in line else "sent"
                if kind in sweep_lines_shown:
                    continue
                sweep_lines_shown.add(kind)
            out.buffer.write(prefix + line)
            out.buffer.flush()

    def schedule_restart(self, now: float) -> float:
        """After the child died: when to start it again (an exponential back-off); returns the delay in s."""
        if now - self.started_at > RESTART_STABLE_AFTER:
            self.restarts = 0
        delay = min(RESTART_DELAY_MAX, RESTART_DELAY_FIRST * 2**self.restarts)
        self.restarts += 1
        self.restart_at = now + delay
        return delay

    def terminate(self) -> None:
        """Ask the child to stop: SIGTERM, on which Granian and Celery finish what they are doing first."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        """Wait until the child has exited; kill it at ``deadline`` (``time.monotonic()`` s)."""
        if self.process is None:
            return
        try:
            self.process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.terminate()
        self.wait_stopped(time.monotonic() + STOP_TIMEOUT)


def stop_children(children: list[Child]) -> None:
    """Stop the stack: every child but Redis at once (each finishes what it is doing: Granian its requests, the
    Celery workers their jobs), then Redis, which the workers need until they have acknowledged their last job.
    A job queued meanwhile stays in Redis's append-only file for the next start. One after another, as before,
    the web server's, beat's and the workers' shutdowns added up to 4.6 s; at once, 2.4 s."""
    others = [child for child in children if child.name != "redis"]
    for child in others:
        child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in others:
        child.wait_stopped(deadline)
    for child in children:
        if child.name == "redis":
            child.stop()


class Command(BaseCommand):
    help = "Start Redis, the Celery worker(s) and the web server for local use; Ctrl-C stops them all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--concurrency",
            type=int,
            default=int(os.environ.get("WORKER_CONCURRENCY", min(2, os.cpu_count() or 1))),
            help="Reconstruction worker processes (default: min(2, CPUs)).",
        )
        parser.add_argument(
            "--web-workers",
            type=int,
            default=int(os.environ.get("WEB_CONCURRENCY") or default_web_processes()),
            help=f"Web server (Granian) processes, {WEB_THREADS} threads each (default: one per two CPUs).",
        )
        parser.add_argument("--no-training-worker", action="store_true", help="Do not start a training worker.")

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        if not port_is_free(host, port):
            raise CommandError(
                f"Port {port} on {host} is in use (another `make run`?). Stop that, or pick another port: "
                f"make run PORT={port + 1}"
            )
        run_dir = Path(settings.RUN_DIR)
        run_dir.mkdir(exist_ok=True)

        self.stdout.write("Preparing the database…")
        call_command("migrate", interactive=False, verbosity=0)
        self._collect_static()
        version = model_version_ensure_active()
        self.stdout.write(f"Active model: {version.name}")
        login = self._demo_account(run_dir)

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if os.geteuid() == 0:
            # README: `make run` as root on a fresh machine. Celery's warning against a root worker is for servers;
            # this one listens on loopback only (Redis bound to 127.0.0.1), so it would only alarm a newcomer.
            root_warning = "ignore:You're running the worker with superuser privileges"
            env["PYTHONWARNINGS"] = ",".join(filter(None, (env.get("PYTHONWARNINGS"), root_warning)))
        # Each web thread and worker keeps its database connection (a new one per request costs ~0.7 ms of CPU).
        env.setdefault("DATABASE_CONN_MAX_AGE", "600")
        children: list[Child] = []
        broker = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL")
        if broker:
            self.stdout.write(f"Using the Redis named in the environment: {broker}")
        else:
            redis_port = 6379 if port_is_free("127.0.0.1", 6379) else free_port()
            broker = f"redis://127.0.0.1:{redis_port}/0"
            env["REDIS_URL"] = env["CELERY_BROKER_URL"] = broker
            children.append(self._redis_child(run_dir, redis_port, env))

        # --quiet: no banner (the site's own banner below says what runs where).
        worker = [sys.executable, "-m", "celery", "-A", "carsite", "--quiet", "worker", "--loglevel", "INFO"]
        worker += ["--without-gossip", "--without-mingle"]
        concurrency = str(options["concurrency"])
        children.append(Child("worker", [*worker, "-Q", "reconstruct", "-c", concurrency, "-n", "reconstruct@%h"], env))
        # Celery beat sends the sweep (reconstruct/services/recovery.py) every RECONSTRUCT_SWEEP_INTERVAL s.
        beat = [sys.executable, "-m", "celery", "-A", "carsite", "--quiet", "beat", "--loglevel", "INFO"]
        children.append(Child("beat", [*beat, "--schedule", str(run_dir / "celerybeat-schedule")], env))
        if not options["no_training_worker"] and self._training_queue_in_use():
            # Training runs torch with its own threads: one job at a time.
            # TORCH_LOGS=-onnx: the ONNX exporter logs errors only, not "torchvision is not installed" at each export.
            training_env = {**env, "TORCH_LOGS": env.get("TORCH_LOGS", "-onnx")}
            children.append(
                Child("training", [*worker, "-Q", "training", "-c", "1", "-n", "training@%h"], training_env)
            )
        children.append(Child("web", web_server_args(host, port, options["web_workers"]), env))

        stopping = threading.Event()

        def request_stop(signum: int, frame: Any) -> None:
            stopping.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

        try:
            for child in children:
                child.start(sys.stdout)
                self._say_started(child)
                if child.name == "redis":
                    self._wait_for_redis(broker, child)
            self._wait_for_port(host, port, children[-1])
            self._banner(host, port, login, broker)
            while not stopping.wait(0.5):
                self._supervise(children)
        finally:
            self.stdout.write("\nStopping…")
            stop_children(children)
        self.stdout.write("Stopped.")

    def _say_started(self, child: Child) -> None:
        pid = child.process.pid if child.process else None
        self.stdout.write(f"[runlocal] {child.name} started (pid {pid})")

    def _supervise(self, children: list[Child]) -> None:
        """Start again, after its back-off, every child that died; the others keep serving meanwhile."""
        now = time.monotonic()
        for child in children:
            if child.process is None or child.process.poll() is None:
                continue
            if child.restart_at is None:
                delay = child.schedule_restart(now)
                self.stderr.write(
                    f"[runlocal] {child.name} stopped unexpectedly (exit code {child.process.returncode}); "
                    f"starting it again in {delay:.0f} s (restart {child.restarts})"
                )
            elif now >= child.restart_at:
                child.start(sys.stdout)
                self._say_started(child)

    def _collect_static(self) -> None:
        """Hashed, compressed copies of the static files in STATIC_ROOT (carsite/staticfiles.py), which browsers
        may cache for a year; made again only when a source file is newer than the last collection (it takes
        10-30 s on a busy machine, mostly compressing the admin's scripts)."""
        manifest = Path(settings.STATIC_ROOT) / "staticfiles.json"
        sources = (Path(storage.path(name)) for finder in get_finders() for name, storage in finder.list([]))
        newest = max((path.stat().st_mtime for path in sources), default=0.0)
        if manifest.exists() and manifest.stat().st_mtime >= newest:
            return
        self.stdout.write("Preparing the static files…")
        call_command("collectstatic", interactive=False, verbosity=0)

    def _redis_child(self, run_dir: Path, port: int, env: dict[str, str]) -> Child:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise CommandError("redis-server is not installed: apt-get install -y redis-server (make run does this).")
        data = run_dir / "redis"
        data.mkdir(exist_ok=True)
        args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--protected-mode", "yes"]
        # The append-only file keeps queued jobs across restarts; no snapshots.
        args += ["--appendonly", "yes", "--save", "", "--daemonize", "no", "--logfile", "", "--loglevel", "warning"]
        return Child("redis", args, env)

    def _wait_for_redis(self, url: str, child: Child) -> None:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if child.process and child.process.poll() is not None:
                raise CommandError("redis-server could not start; see its output above.")
            try:
                client.ping()
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
                continue
            # The port was free when it was chosen; another program may have taken it before redis-server bound
            # it (this one then stops). Never hand the stack a stranger's Redis: its queue is not ours.
            pid = client.info("server").get("process_id")
            if child.process is not None and pid != child.process.pid:
                raise CommandError(
                    f"Redis's port {client.connection_pool.connection_kwargs.get('port')} is in use by another "
                    f"redis-server (pid {pid}), which took it while this one started. Please run again."
                )
            return
        raise CommandError(f"redis-server did not answer on {url} within 15 s.")

    def _wait_for_port(self, host: str, port: int, child: Child) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.process and child.process.poll() is None:
            try:
                socket.create_connection((host, port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)

    def _training_queue_in_use(self) -> bool:
        routes = getattr(settings, "CELERY_TASK_ROUTES", {}) or {}
        routed = any(isinstance(r, dict) and r.get("queue") == "training" for r in routes.values())
        return routed and importlib.util.find_spec("torch") is not None

    def _demo_account(self, run_dir: Path) -> str:
        users = get_user_model()
        saved = run_dir / "demo-login.txt"
        if not users.objects.filter(username=DEMO_USERNAME).exists():
            password = secrets.token_urlsafe(9)
            # Staff, so the admin (curation, training, models) can be tried at once. Local use only.
            users.objects.create_superuser(DEMO_USERNAME, "demo@localhost", password)
            saved.write_text(f"{DEMO_USERNAME} {password}\n")
            saved.chmod(0o600)
        if saved.exists():
            username, _, password = saved.read_text().strip().partition(" ")
            demo = users.objects.filter(username=username).first()
            # Only while it still works: someone may have changed it since (one password hash, under a second).
            if demo is not None and demo.check_password(password):
                return f"username {username}, password {password}"
        return f"username {DEMO_USERNAME} (password changed since; reset it: python manage.py changepassword demo)"

    def _banner(self, host: str, port: int, login: str, broker: str) -> None:
        url = f"http://{host}:{port}/"
        self.stdout.write(
            "\n"
            f"  carsite is running at {url}\n"
            f"  Demo account: {login} (also staff: {url}admin/)\n"
            f"  API: {url}api/reconstructions/ (token on {url}account/)\n"
            f"  Queue: {broker} · emails (password reset) are printed here\n"
            "  Press Ctrl-C to stop.\n"
        )
