"""python -m loadtest: N simulated users for T seconds against the real local stack; last line JSON.

1. Starts ``manage.py runlocal`` (Redis, the Celery worker, Granian: the very code of ``make run``) on
   loopback, with its own SQLite database, media folder and run folder in a temporary directory, and no
   hourly upload limit. The directory is made in ``--tmpdir``: by default ``/dev/shm`` (a RAM filesystem)
   when it has room, else the system's temporary folder. Why: on a disk, what creating a file costs depends
   on what was deleted there before. This machine's ext4 has no journal, so the kernel skips, one by one,
   the inodes freed in the last minute or more (up to six) before it reuses one (``find_inode_bit`` and
   ``recently_deleted``). A previous run's cleanup, or ``make test``, deletes thousands of files in
   ``/tmp``, and each file the next run creates then costs 0.3 to 1.7 ms of kernel CPU instead of 0.03 to
   0.1 (docs/performance.md, "Stop 30"). The report says where the files were and what creating one cost.
2. Creates N accounts with API tokens and uploads a few warm-up photos (each worker loads the model).
3. Runs Locust headless (``loadtest/locustfile.py``) for T seconds: each user uploads photos from the folder,
   waits for the result, fetches it and opens the gallery.
4. Waits until no accepted upload is pending or running, then checks every one: done, and its four files
   in storage.
5. Prints a summary, then one JSON object (the last line): users, seconds, requests, errors, accepted, done,
   failed, lost, recon_per_s, p50_s, p95_s (upload request start to result known to the client),
   cpu_ms_per_recon (CPU time of the stack's processes, from /proc, per reconstruction, the load generator
   excluded), cpu_ms_per_recon_by_process (web, worker, redis, supervisor, and loadgen for Locust itself),
   the machine's load average before and after, ``workdir`` (the temporary directory's filesystem and
   ``file_create_ms``, the CPU to create, write and close one 20 kB file there before the run) and ``python``
   (the interpreter's version and real path).

Speed is measured here, never asserted: tests run this for a few seconds only to see that it works.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from loadtest import photos_in, site_env

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_UPLOADS = 4
STACK_START_TIMEOUT = 120.0
RAM_FOLDER = Path("/dev/shm")
RAM_FOLDER_MIN_FREE = 2 * 2**30  # bytes: a 60 s run writes about 150 MB (four files a reconstruction)
PROBE_FILES = 100
PROBE_BYTES = 20_000  # about a photo of ../shared/data/cars


def python_build() -> dict[str, str]:
    """The interpreter that ran the stack (the load test's own, ``sys.executable``): ``version`` and
    ``executable``, the base interpreter's real path (not the venv's link). How it was built moves these
    figures (the Makefile's ``PY``; docs/performance.md, "Stop 31")."""
    return {"version": platform.python_version(), "executable": os.path.realpath(sys._base_executable)}


def default_tmpdir() -> Path:
    """Where a run's temporary directory goes unless ``--tmpdir`` says: ``/dev/shm`` when it is a writable
    tmpfs with ``RAM_FOLDER_MIN_FREE`` bytes free, else the system's temporary folder (``tempfile``)."""
    try:
        if (
            filesystem_of(RAM_FOLDER) == "tmpfs"
            and os.access(RAM_FOLDER, os.W_OK)
            and shutil.disk_usage(RAM_FOLDER).free >= RAM_FOLDER_MIN_FREE
        ):
            return RAM_FOLDER
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` is on ("ext4", "tmpfs", ...), from ``/proc/mounts``: the mount
    point nearest above it; "" when unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    resolved = str(path.resolve())
    best, kind = "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # \040 is a space
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def file_create_ms(folder: Path, count: int = PROBE_FILES, size: int = PROBE_BYTES) -> float:
    """CPU (user + system, ms) to create, write and close one new file of ``size`` bytes in ``folder``, the
    mean of ``count``; the files stay (deleting them is what makes the next creation dear on some disks)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    started = time.process_time()
    for index in range(count):
        descriptor = os.open(folder / f"probe-{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, data)
        finally:
            os.close(descriptor)
    return round(1000 * (time.process_time() - started) / count, 3)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_tree(root: int) -> dict[int, tuple[str, float]]:
    """``root`` and its descendants: pid -> (role, CPU seconds so far, user + system, from /proc/<pid>/stat)."""
    parents: dict[int, int] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        stats[pid] = (process_role(cmdline), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return {pid: stats[pid] for pid in tree if pid in stats}


def process_role(cmdline: str) -> str:
    """What a process of the stack is, from its command line."""
    if "redis-server" in cmdline:
        return "redis"
    if "celery" in cmdline:
        return "worker"
    if "granian" in cmdline:
        return "web"
    return "supervisor"  # manage.py runlocal


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two ``process_tree`` readings, per role (a process born meanwhile counts whole)."""
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        earlier = before.get(pid, (role, 0.0))[1]
        spent[role] = spent.get(role, 0.0) + max(0.0, seconds - earlier)
    return spent


def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` quantile (nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Stack:
    """``manage.py runlocal`` in a throwaway directory; stopped with SIGINT (its own orderly shutdown)."""

    def __init__(self, workdir: Path, port: int, concurrency: int | None, web_workers: int | None) -> None:
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL")}
        env.update(site_env(workdir))
        if concurrency:
            env["WORKER_CONCURRENCY"] = str(concurrency)
        if web_workers:
            env["WEB_CONCURRENCY"] = str(web_workers)
        self.env = env
        self.log = workdir / "stack.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        args = [sys.executable, "manage.py", "runlocal", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*args, "--no-training-worker"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STACK_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the stack stopped while starting; its output:\n{self.log_tail()}")
            if "carsite is running at" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.3)
        raise SystemExit(f"the stack did not start within {STACK_START_TIMEOUT:.0f} s; its output:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def accounts_create(users: int, path: Path) -> None:
    """``users`` accounts, each with an API token and a signed-in session, written to ``path`` (JSON).

    The sessions are made here, not through the login form: a password check costs ~0.3 s of CPU
    (PBKDF2), which is not what this test measures. Each browser also holds a CSRF cookie, as a browser that
    signed in through the form does (without one, every page would make a new secret and set it again).
    """
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.middleware.csrf import CSRF_ALLOWED_CHARS, CSRF_SECRET_LENGTH
    from django.utils.crypto import get_random_string

    from reconstruct.auth import BACKEND
    from reconstruct.services.tokens import api_token_regenerate

    accounts = []
    for index in range(users):
        user = get_user_model()(username=f"load{index}", email=f"load{index}@localhost")
        user.set_unusable_password()
        user.save()
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = BACKEND
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        csrf = get_random_string(CSRF_SECRET_LENGTH, allowed_chars=CSRF_ALLOWED_CHARS)
        cookie = f"{settings.SESSION_COOKIE_NAME}={session.session_key}; {settings.CSRF_COOKIE_NAME}={csrf}"
        accounts.append({"username": user.username, "token": api_token_regenerate(user), "cookie": cookie})
    path.write_text(json.dumps(accounts))


def warm_up(stack: Stack, images: Path, accounts: Path, timeout: float = 60.0) -> None:
    """A few uploads, waited for: every worker process loads the model before the measurement starts."""
    from urllib3 import encode_multipart_formdata

    token = json.loads(accounts.read_text())[0]["token"]
    photos = photos_in(images)
    ids = []
    for photo in photos[:WARMUP_UPLOADS]:
        body, content_type = encode_multipart_formdata({"image": (photo.name, photo.read_bytes())})
        request = urllib.request.Request(
            f"{stack.url}/api/reconstructions/",
            data=body,
            headers={"Authorization": f"Token {token}", "Content-Type": content_type, "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            ids.append(json.loads(response.read())["id"])
    drain(ids, timeout)


def drain(ids: list[str], timeout: float) -> bool:
    """Wait until none of ``ids`` (public ids) is pending or running; False on timeout."""
    from reconstruct.models import Reconstruction

    deadline = time.monotonic() + timeout
    unfinished = [Reconstruction.Status.PENDING, Reconstruction.Status.RUNNING]
    while time.monotonic() < deadline:
        if not Reconstruction.objects.filter(uuid__in=ids, status__in=unfinished).exists():
            return True
        time.sleep(0.2)
    return False


def check(ids: list[str]) -> dict[str, object]:
    """Every accepted upload: its row's status, and for a done one its four files in storage."""
    from django.core.files.storage import default_storage

    from reconstruct.models import FILE_KINDS, Reconstruction

    rows = {str(r.uuid): r for r in Reconstruction.objects.filter(uuid__in=ids)}
    counts = {"done": 0, "failed": 0, "unfinished": 0, "lost": 0, "missing_files": 0}
    finished = []
    reasons: dict[str, int] = {}
    for public_id in ids:
        row = rows.get(public_id)
        if row is None:
            counts["lost"] += 1
        elif row.status == Reconstruction.Status.DONE:
            counts["done"] += 1
            finished.append(row.finished_at)
            if not all(getattr(row, kind) and default_storage.exists(getattr(row, kind).name) for kind in FILE_KINDS):
                counts["missing_files"] += 1
        elif row.status == Reconstruction.Status.FAILED:
            counts["failed"] += 1
            reasons[row.error] = reasons.get(row.error, 0) + 1
        else:
            counts["unfinished"] += 1
    return {**counts, "last_finished": max(finished) if finished else None, "failure_reasons": reasons}


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/cars")
    parser.add_argument("--port", type=int, default=0, help="the web server's port (default: a free one)")
    parser.add_argument(
        "--mode",
        choices=("upload-wait", "status-wait", "poll"),
        default="upload-wait",
        help="how a user waits for the result: the upload request waits (POST ?wait=, default), the status URL's "
        "long-poll after a 202, or a poll of the status every second",
    )
    parser.add_argument("--poll", action="store_const", const="poll", dest="mode", help="the same as --mode poll")
    parser.add_argument("--concurrency", type=int, help="reconstruction worker processes (runlocal's default)")
    parser.add_argument("--web-workers", type=int, help="web server processes (runlocal's default)")
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (database, media, logs)")
    parser.add_argument(
        "--tmpdir",
        type=Path,
        help="where the temporary directory goes (default: /dev/shm, a RAM filesystem, when it has 2 GiB free, "
        "else the system's temporary folder; see the module's docstring)",
    )
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        parser.error(f"no folder of photos at {args.images} (pass --images DIR)")
    if args.tmpdir is not None and not args.tmpdir.is_dir():
        parser.error(f"--tmpdir {args.tmpdir} is not a folder")

    # A SIGTERM (`timeout`, a CI runner) stops the run as Ctrl-C does: the stack is stopped and the folder removed.
    signal.signal(signal.SIGTERM, _terminated)
    workdir = Path(tempfile.mkdtemp(prefix="carsite-loadtest-", dir=args.tmpdir or default_tmpdir()))
    workdir_report: dict[str, object] = {"in": str(workdir.parent), "path": str(workdir), "kept": args.keep}
    stack = Stack(workdir, args.port or free_port(), args.concurrency, args.web_workers)
    load_before = load_average()
    try:
        workdir_report["filesystem"] = filesystem_of(workdir)
        workdir_report["file_create_ms"] = file_create_ms(workdir / "probe")
        stack.start()
        os.environ.update(stack.env)
        import django

        django.setup()
        accounts = workdir / "accounts.json"
        accounts_create(args.users, accounts)
        warm_up(stack, args.images, accounts)

        results = workdir / "results.json"
        locust_env = {**stack.env, "LOADTEST_ACCOUNTS": str(accounts), "LOADTEST_IMAGES": str(args.images)}
        locust_env.update(LOADTEST_RESULTS=str(results), LOADTEST_MODE=args.mode)
        locust = [sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")), "--headless"]
        locust += ["--users", str(args.users), "--spawn-rate", str(args.users), "--run-time", f"{args.seconds}s"]
        locust += ["--host", stack.url, "--stop-timeout", "60", "--only-summary", "--loglevel", "WARNING"]
        locust += ["--exit-code-on-error", "0"]
        assert stack.process is not None
        cpu_before = process_tree(stack.process.pid)
        loadgen_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        # In its own session: a Ctrl-C in the terminal reaches this process only, which stops Locust (subprocess.run
        # kills it on the KeyboardInterrupt) instead of Locust printing a traceback for each of its greenlets.
        subprocess.run(locust, cwd=ROOT, env=locust_env, check=True, stdout=sys.stderr, start_new_session=True)
        loadgen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        summary = json.loads(results.read_text())
        ids = [u["id"] for u in summary["uploads"] if u["id"]]
        drained = drain(ids, args.drain_timeout)
        cpu_after = process_tree(stack.process.pid)
        outcome = check(ids)
    finally:
        stack.stop()
        if args.keep:
            print(f"kept the run's folder (database, media, stack.log): {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    latencies = [u["latency_s"] for u in summary["uploads"] if u["latency_s"] is not None and u["status"] == "done"]
    done = outcome["done"]
    spent = cpu_by_role(cpu_before, cpu_after)
    loadgen = (loadgen_after.ru_utime + loadgen_after.ru_stime) - (loadgen_before.ru_utime + loadgen_before.ru_stime)
    last = outcome["last_finished"].timestamp() if outcome["last_finished"] else started
    per_recon = {role: round(1000 * s / done, 1) if done else None for role, s in sorted(spent.items())}
    per_recon["loadgen"] = round(1000 * loadgen / done, 1) if done else None
    report = {
        "users": args.users,
        "seconds": args.seconds,
        "mode": args.mode,
        "requests": summary["requests"],
        "errors": summary["errors"] + outcome["missing_files"] + outcome["lost"] + (0 if drained else 1),
        "accepted": len(ids),
        "done": done,
        "failed": outcome["failed"],
        "lost": outcome["lost"],
        "unfinished": outcome["unfinished"],
        "recon_per_s": round(done / max(last - started, args.seconds), 2),
        "p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
        "p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
        "cpu_ms_per_recon": round(1000 * sum(spent.values()) / done, 1) if done else None,
        "cpu_ms_per_recon_by_process": per_recon,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "cpus": os.cpu_count(),
        "python": python_build(),
        "workdir": workdir_report,
    }
    for kind, count in summary["error_kinds"].items():
        print(f"error x{count}: {kind}")
    for reason, count in outcome["failure_reasons"].items():
        print(f"failed x{count}: {reason}")
    if not drained:
        print(f"the queue did not drain within {args.drain_timeout:.0f} s")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: main's cleanup has run (the stack stopped, the folder removed)
        print("interrupted: the stack is stopped and its folder removed", file=sys.stderr)
        sys.exit(130)
