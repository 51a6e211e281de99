"""carsite settings: one module, read from environment variables.

Every variable is documented in README.md ("Configuration"). The defaults run on a laptop with
nothing but the project (SQLite, files under ./media, Redis on loopback); production-only values
(SECRET_KEY, a real database, S3) have no silent default. A malformed value stops the start-up
with a message naming the variable, rather than running with a surprise.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from carsite.broker import publish_retry_errback

BASE_DIR = Path(__file__).resolve().parent.parent
# Local state of `make run`: the generated SECRET_KEY, Redis's data, the demo login.
RUN_DIR = Path(os.environ.get("CARSITE_RUN_DIR") or BASE_DIR / ".run")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def envstr(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {value!r}")


def envint(name: str, default: int, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def envfloat(name: str, default: float, minimum: float | None = None) -> float:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def envlist(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower() or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


ON_LAMBDA = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))

DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
SITE_NAME = envstr("SITE_NAME", "carsite")

# A site reachable only on loopback (DEBUG, or the default ALLOWED_HOSTS) may run without a configured
# SECRET_KEY: it gets a random one, generated once and kept in .run/secret_key so sessions survive a
# restart and every local process signs alike. Anything else (a public host name, Lambda) must set it.
_LOCAL_ONLY = DEBUG or set(ALLOWED_HOSTS) <= {"127.0.0.1", "localhost", "[::1]", "testserver"}


def _local_secret_key() -> str:
    path = RUN_DIR / "secret_key"
    if not path.exists():
        RUN_DIR.mkdir(exist_ok=True)
        # O_EXCL: two processes starting at once must not write two different keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    if ON_LAMBDA or not _LOCAL_ONLY:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it to a long random string (for example the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`); it may be omitted only "
            "for a local site (DEBUG=1 or ALLOWED_HOSTS left at its loopback default)."
        )
    SECRET_KEY = _local_secret_key()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",  # naturaltime: "finished 12 seconds ago", never "0 minutes ago"
    "axes",
    "csp",
    "reconstruct",
]
if (BASE_DIR / "reconstruct" / "curation" / "apps.py").exists():
    INSTALLED_APPS.append("reconstruct.curation")

MIDDLEWARE = [
    # Startup only (RECONSTRUCT_PRELOAD): loads the model before the first request, then leaves the chain.
    "reconstruct.middleware.PreloadMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_permissions_policy.PermissionsPolicyMiddleware",
    # A clear 413 for a body larger than its sender may send, before it is read (reconstruct/middleware.py); below
    # the middleware that add headers, so its page has them too.
    "reconstruct.middleware.RequestSizeLimitMiddleware",
    # Last: turns a throttled login into its 429 page (reconstruct/throttle.py).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "carsite.urls"
WSGI_APPLICATION = "carsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "reconstruct.context_processors.site",
            ],
            # {% url %} as Django's, with the URLs that take no arguments remembered (reconstruct/templatetags).
            "builtins": ["reconstruct.templatetags.url_cache"],
        },
    },
]

# Database: SQLite next to the code unless DATABASE_URL names another (postgres://user:pass@host/db).
DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # On Lambda a warm container keeps its connection between requests (300 s) instead of connecting and
        # authenticating in each: at most one connection per container (with many containers: RDS Proxy, or
        # PostgreSQL's idle_session_timeout for frozen containers' connections; README, Deploy to AWS).
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 300 if ON_LAMBDA else 0, minimum=0),
        # A kept connection is checked (one round trip) before a request reuses it, so one the server closed meanwhile
        # (a frozen Lambda container's, past the database's idle timeout) is replaced instead of failing the request.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the Celery worker write to the same file: WAL lets readers run beside a
    # writer, IMMEDIATE transactions take the write lock up front (no deadlock-on-upgrade), and the
    # timeout makes a second writer wait instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
if ON_LAMBDA and DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    raise ImproperlyConfigured(
        "DATABASE_URL must name a PostgreSQL database on AWS Lambda (postgres://user:password@host:5432/name). "
        "SQLite there is a file inside one container: read-only or lost on the next cold start, with every "
        "account and upload in it. See README, Deploy to AWS."
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "reconstruct:upload"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# Static files: WhiteNoise serves them from the app and project folders (no collectstatic needed);
# `collectstatic` (make run, the Lambda bundle) fills STATIC_ROOT with hashed, compressed copies that
# browsers may cache for a year (carsite/staticfiles.py).
# Behind API Gateway's default URL (https://<id>.execute-api.<region>.amazonaws.com/dev/) every path starts with
# the stage: FORCE_SCRIPT_NAME=/dev puts it in front of every URL Django writes (STATIC_URL too, which Django would
# otherwise compute once, before the first request knows its prefix); WhiteNoise strips it again. Unset behind a
# custom domain.
FORCE_SCRIPT_NAME = envstr("FORCE_SCRIPT_NAME").rstrip("/") or None
STATIC_URL = envstr("STATIC_URL", f"{FORCE_SCRIPT_NAME}/static/" if FORCE_SCRIPT_NAME else "static/")
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
# Served at the site's root: /favicon.ico (browsers and crawlers ask for it whatever the page says).
WHITENOISE_ROOT = BASE_DIR / "carsite" / "root"
# WhiteNoise warns when STATIC_ROOT does not exist, which is normal before any collectstatic.
warnings.filterwarnings("ignore", message="No directory at: ", category=UserWarning)

# Caches, in each process's memory: the gallery's rendered cards and whole grids (reconstruct/presenters.py:
# cards_html). A card is small (about 0.6 kB pickled; 3.5 kB at most, with a 255-character file name) and lives
# while it is on someone's first page, so their cache holds many (10,000: about 6 MB, 35 MB at most); a grid is a
# page's 24 cards in one string (about 14 kB) and only helps a page shown again unchanged, so its cache is small
# (200: about 3 MB, 17 MB at most) and cannot push cards out. Django's default, one LocMemCache of 300 entries for
# both, was full within seconds under `make loadtest` (20 users' 480 cards and a new grid per upload), so most
# cards were rendered again on every gallery view.
_LOCMEM = "django.core.cache.backends.locmem.LocMemCache"
CACHES = {
    "default": {"BACKEND": _LOCMEM, "LOCATION": "default"},
    "cards": {"BACKEND": _LOCMEM, "LOCATION": "gallery-cards", "OPTIONS": {"MAX_ENTRIES": 10_000}},
    "grids": {"BACKEND": _LOCMEM, "LOCATION": "gallery-grids", "OPTIONS": {"MAX_ENTRIES": 200}},
}

# Media: local files by default, private S3 objects when AWS_STORAGE_BUCKET_NAME is set. Keys are
# always generated by the server (reconstruct/services.py), never taken from an upload's name.
MEDIA_ROOT = Path(envstr("MEDIA_ROOT") or BASE_DIR / "media")
MEDIA_URL = "media/"  # never routed: local files are served by an owner-checked view
AWS_STORAGE_BUCKET_NAME = envstr("AWS_STORAGE_BUCKET_NAME")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "carsite.staticfiles.StaticFilesStorage"},
}
# S3 calls time out and retry with boto's exponential back-off ("standard" mode) rather than hang a request or a job
# for boto's default 60 s; a job whose storage stays unreachable is retried later (RECONSTRUCT_STORAGE_RETRIES).
# An upload makes four S3 calls (an existence check and a write, for the photo and its thumbnail): with a hung
# server it waits at most 4 x AWS_S3_MAX_ATTEMPTS x AWS_S3_TIMEOUT s (40 s), then answers 503.
AWS_S3_TIMEOUT = envfloat("AWS_S3_TIMEOUT", 5.0, minimum=0.1)
AWS_S3_MAX_ATTEMPTS = envint("AWS_S3_MAX_ATTEMPTS", 2, minimum=1)
# Writes refuse to replace an object (PutObject If-None-Match: *) instead of asking first whether the name is
# taken (carsite/media_storage.py). Turn off for an S3-compatible server that ignores the condition.
AWS_S3_CONDITIONAL_WRITES = envbool("AWS_S3_CONDITIONAL_WRITES", True)
if AWS_STORAGE_BUCKET_NAME:
    from botocore.config import Config as BotoConfig

    STORAGES["default"] = {
        # django-storages' S3Storage, writing small files with one PutObject (carsite/media_storage.py).
        "BACKEND": "carsite.media_storage.MediaStorage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": envstr("AWS_S3_ENDPOINT_URL") or None,
            "region_name": envstr("AWS_S3_REGION_NAME") or None,
            "location": envstr("AWS_LOCATION"),
            # Objects stay private (the bucket's default); they are read through presigned URLs.
            "default_acl": envstr("AWS_DEFAULT_ACL") or None,
            "querystring_auth": True,
            "querystring_expire": envint("AWS_QUERYSTRING_EXPIRE", 3600, minimum=60),
            "file_overwrite": False,
            "signature_version": "s3v4",
            "addressing_style": envchoice("AWS_S3_ADDRESSING_STYLE", "auto", ("auto", "path", "virtual")),
        },
    }
    # With a client_config django-storages ignores its own addressing_style and signature_version: repeated here.
    STORAGES["default"]["OPTIONS"]["client_config"] = BotoConfig(
        s3={"addressing_style": STORAGES["default"]["OPTIONS"]["addressing_style"]},
        signature_version="s3v4",
        connect_timeout=AWS_S3_TIMEOUT,
        read_timeout=AWS_S3_TIMEOUT,
        retries={"max_attempts": AWS_S3_MAX_ATTEMPTS, "mode": "standard"},
    )

# Uploads. Phones write 3-12 MB JPEGs; the byte limit is checked before the body is read, the pixel
# limit before the pixels are decoded (a small file can hold a huge "decompression bomb").
RECONSTRUCT_MAX_UPLOAD_BYTES = envint("RECONSTRUCT_MAX_UPLOAD_BYTES", 25 * 1024 * 1024, minimum=1024)
RECONSTRUCT_MAX_IMAGE_PIXELS = envint("RECONSTRUCT_MAX_IMAGE_PIXELS", 100_000_000, minimum=1)
RECONSTRUCT_MIN_IMAGE_SIDE = envint("RECONSTRUCT_MIN_IMAGE_SIDE", 16, minimum=1)
# Each account may start this many reconstructions in any hour (0: no limit; staff are not limited). A photo over
# the limit is refused before it is read (429 with Retry-After from the API), so nothing is half stored.
RECONSTRUCT_UPLOADS_PER_HOUR = envint("RECONSTRUCT_UPLOADS_PER_HOUR", 100, minimum=0)
# Above this an uploaded file is streamed to a temporary file rather than held in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = envint("FILE_UPLOAD_MAX_MEMORY_SIZE", 2_621_440, minimum=0)
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("DATA_UPLOAD_MAX_MEMORY_SIZE", 2_621_440, minimum=0)
# AWS Lambda takes at most 6 MB per request and API Gateway hands it a photo base64-encoded (a third bigger): there a
# request may carry about 4 MB of photo. Bigger ones go from the browser straight to S3 (a presigned POST) when the
# media are in S3 (RECONSTRUCT_DIRECT_UPLOADS); see reconstruct/services/direct_uploads.py.
RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES = envint(
    "RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES", 4 * 1024 * 1024 if ON_LAMBDA else RECONSTRUCT_MAX_UPLOAD_BYTES, minimum=1024
)
RECONSTRUCT_DIRECT_UPLOADS = envbool("RECONSTRUCT_DIRECT_UPLOADS", bool(AWS_STORAGE_BUCKET_NAME))
# The largest request body anyone but staff may send (413 above it, before the body is read: Django would stream a
# form's files of any size to temporary files, and the CSRF check reads the form of every POST); staff may send the
# admin up to the second, for its zip of training photos (reconstruct/middleware.py: RequestSizeLimitMiddleware).
# At least the largest photo and its multipart framing (reconstruct/http.py: MULTIPART_OVERHEAD, 64 kB).
RECONSTRUCT_MAX_REQUEST_BYTES = envint(
    "RECONSTRUCT_MAX_REQUEST_BYTES",
    RECONSTRUCT_MAX_UPLOAD_BYTES + 1024 * 1024,
    minimum=RECONSTRUCT_MAX_UPLOAD_BYTES + 64 * 1024,
)
RECONSTRUCT_MAX_STAFF_REQUEST_BYTES = envint(
    "RECONSTRUCT_MAX_STAFF_REQUEST_BYTES",
    max(2 * 1024**3, RECONSTRUCT_MAX_REQUEST_BYTES),
    minimum=RECONSTRUCT_MAX_REQUEST_BYTES,
)

# How reconstructions run: "celery" queues a task for a worker; "sync" runs it inside the request
# (AWS Lambda, where nothing else is running: chosen automatically there).
RECONSTRUCT_MODE = envchoice("RECONSTRUCT_MODE", "sync" if ON_LAMBDA else "celery", ("celery", "sync"))
# Load the active model (and run it once on a blank frame) and open the media storage's client when the site
# starts, not in its first request (reconstruct/middleware.py: PreloadMiddleware). On by default on AWS Lambda,
# where zappa's handler starts the site in the init phase (zappa_settings.json: INSTANTIATE_LAMBDA_HANDLER_ON_IMPORT).
RECONSTRUCT_PRELOAD = envbool("RECONSTRUCT_PRELOAD", ON_LAMBDA)
# A reconstruction is retried this many times after its worker died; then it is failed.
RECONSTRUCT_MAX_ATTEMPTS = envint("RECONSTRUCT_MAX_ATTEMPTS", 3, minimum=1)
# A job whose storage does not answer is retried this many times, RECONSTRUCT_STORAGE_RETRY_DELAY s later and
# three times longer each time (5, 15, 45 s: about a minute), then failed with a reason; "Try again" works once the
# storage is back.
RECONSTRUCT_STORAGE_RETRIES = envint("RECONSTRUCT_STORAGE_RETRIES", 3, minimum=0)
RECONSTRUCT_STORAGE_RETRY_DELAY = envfloat("RECONSTRUCT_STORAGE_RETRY_DELAY", 5.0, minimum=0)
# The upload form waits this long (s) for the result before it shows the progress page: a job that finishes
# in time goes straight to its finished page (no progress page, no long-poll, no reload). 0: never waits.
RECONSTRUCT_UPLOAD_WAIT = envfloat("RECONSTRUCT_UPLOAD_WAIT", 3.0, minimum=0)
# At most this many requests of one web process wait for a job at once (``?wait=``, the upload form's wait), and
# at most RECONSTRUCT_MAX_WAITING_PER_USER of one account; past either, a request answers at once and the client
# polls (reconstruct/services/waiting.py). Each waiting request holds a server thread (32 a process under
# ``make run``): the cap keeps threads for everyone else.
RECONSTRUCT_MAX_WAITING = envint("RECONSTRUCT_MAX_WAITING", 28, minimum=0)
RECONSTRUCT_MAX_WAITING_PER_USER = envint("RECONSTRUCT_MAX_WAITING_PER_USER", 4, minimum=0)
# Serve stored files through the site even with S3 (instead of redirecting to a presigned URL).
RECONSTRUCT_FILES_VIA_APP = envbool("RECONSTRUCT_FILES_VIA_APP", False)
# Where each process keeps its copy of the active model's files (downloaded once per version, each file checked
# against its SHA-256 before use): this site's own folder (.run/model-cache), never one shared by every site on the
# host; on Lambda, whose code folder is read-only, the function's own /tmp.
MODEL_CACHE_DIR = Path(
    envstr("MODEL_CACHE_DIR")
    or (Path(tempfile.gettempdir()) / "carsite-models" if ON_LAMBDA else RUN_DIR / "model-cache")
)

# Curation (reconstruct/curation; README "Admin: curating photos and training models"). Photos are
# flagged, not refused, by these checks: a perceptual-hash distance at most this is a near duplicate
# (6 of 64 bits catches resized/recompressed copies; 4,000 distinct car photos have 0.5% pairs that close).
CURATION_NEAR_DUPLICATE_DISTANCE = envint("CURATION_NEAR_DUPLICATE_DISTANCE", 6, minimum=0)
# Too small: below both of these (the model would have to enlarge the photo to fill its input).
CURATION_MIN_WIDTH = envint("CURATION_MIN_WIDTH", 128, minimum=1)
CURATION_MIN_HEIGHT = envint("CURATION_MIN_HEIGHT", 64, minimum=1)
# Extreme aspect ratio: width / height outside this range (the training photos run 1.75 to 4).
CURATION_MIN_ASPECT = envfloat("CURATION_MIN_ASPECT", 1.2, minimum=0.01)
CURATION_MAX_ASPECT = envfloat("CURATION_MAX_ASPECT", 4.2, minimum=0.01)
# Car-likeness below this is shown as "does not look like a car" (a typical training car scores about
# 0.5; 0.05 = less car-like than 95% of them; the shipped model flags half of ../shared/data/noncars there).
CURATION_LOW_CAR_LIKENESS = envfloat("CURATION_LOW_CAR_LIKENESS", 0.05, minimum=0)
CURATION_MAX_IMAGE_BYTES = envint("CURATION_MAX_IMAGE_BYTES", 25 * 1024 * 1024, minimum=1024)
CURATION_MAX_ZIP_MEMBERS = envint("CURATION_MAX_ZIP_MEMBERS", 20_000, minimum=1)
# A training run needs at least this many approved photos (a tenth of them are held out for validation).
CURATION_MIN_TRAINING_IMAGES = envint("CURATION_MIN_TRAINING_IMAGES", 20, minimum=2)
# Training runs on the "training" queue, in a worker with torch (`celery -A carsite worker -Q training`).
CURATION_TRAINING_DIR = Path(envstr("CURATION_TRAINING_DIR") or Path(tempfile.gettempdir()) / "carsite-training")
CURATION_TRAINING_TIME_LIMIT = envint("CURATION_TRAINING_TIME_LIMIT", 12 * 3600, minimum=60)
# The training configs staff choose from in the admin (<name>.json, ml.config.TrainConfig).
CURATION_TRAINING_CONFIG_DIR = Path(envstr("CURATION_TRAINING_CONFIG_DIR") or BASE_DIR / "ml" / "configs")

# Celery (carsite/celery.py reads every CELERY_* setting). Redis is the broker; nothing reads task
# results (the Reconstruction row holds status and outcome), so there is no result backend.
REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL") or REDIS_URL
# kombu's Redis transport with one redis-py client per channel instead of one per publish or acknowledgement
# (carsite/redis_transport.py); any other broker URL gets kombu's own transport for it. Not rediss://: kombu turns
# TLS on for it by the transport's name ("rediss"), which a named transport class would replace (plain TCP).
_REDIS_BROKER = CELERY_BROKER_URL.split("://", 1)[0] == "redis"
CELERY_BROKER_TRANSPORT = "carsite.redis_transport:Transport" if _REDIS_BROKER else None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "reconstruct"
# Routed by task name; the curation app adds its training tasks to a "training" queue.
CELERY_TASK_ROUTES = {
    "reconstruct.tasks.*": {"queue": "reconstruct"},
    "reconstruct.curation.tasks.*": {"queue": "training"},
}
# No job is lost when a worker dies: a message is acknowledged only after its task finished
# (acks_late), and one whose worker was killed goes back to the queue (reject_on_worker_lost). Each
# process reserves one message at a time, so a dead process strands at most one.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Redis redelivers a message that was not acknowledged within the visibility timeout, so every
# task's hard time limit must stay below it, or a slow task would run twice.
CELERY_VISIBILITY_TIMEOUT = envint("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_TASK_SOFT_TIME_LIMIT = envint("RECONSTRUCT_SOFT_TIME_LIMIT", 120, minimum=1)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 30
if CELERY_TASK_TIME_LIMIT >= CELERY_VISIBILITY_TIMEOUT:
    raise ImproperlyConfigured("RECONSTRUCT_SOFT_TIME_LIMIT + 30 must stay below CELERY_VISIBILITY_TIMEOUT")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing from a web request must not hang when Redis is down (connection refused) or hung (accepts, never
# answers: SIGSTOP, a full disk): every connect and every command times out after RECONSTRUCT_BROKER_TIMEOUT s.
# A connection error is retried once (a reconnect: Redis restarted), a timeout is not (carsite/broker.py); then
# the upload is kept pending and the sweep below queues it once Redis answers again.
RECONSTRUCT_BROKER_TIMEOUT = envfloat("RECONSTRUCT_BROKER_TIMEOUT", 3.0, minimum=0.1)
CELERY_BROKER_TRANSPORT_OPTIONS |= {
    "socket_timeout": RECONSTRUCT_BROKER_TIMEOUT,
    "socket_connect_timeout": RECONSTRUCT_BROKER_TIMEOUT,
}
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.5,
    "errback": publish_retry_errback,
}
CELERY_BROKER_CONNECTION_TIMEOUT = RECONSTRUCT_BROKER_TIMEOUT
# The sweep (reconstruct/services/recovery.py), run by Celery beat (`make run` starts it): a job running longer
# than RECONSTRUCT_STUCK_AFTER s (the hard time limit plus a margin) lost its worker, and is queued again (or
# failed after RECONSTRUCT_MAX_ATTEMPTS); a pending one the broker did not take is queued.
RECONSTRUCT_SWEEP_INTERVAL = envint("RECONSTRUCT_SWEEP_INTERVAL", 60, minimum=1)
RECONSTRUCT_STUCK_AFTER = envint("RECONSTRUCT_STUCK_AFTER", CELERY_TASK_TIME_LIMIT + 30, minimum=1)
RECONSTRUCT_REQUEUE_AFTER = envint("RECONSTRUCT_REQUEUE_AFTER", 30, minimum=1)
CELERY_BEAT_SCHEDULE = {
    "reconstruction-sweep": {
        "task": "reconstruct.tasks.reconstruction_sweep_task",
        "schedule": float(RECONSTRUCT_SWEEP_INTERVAL),
        # A sweep nobody ran in time is dropped: the next one does the same work.
        "options": {"expires": float(RECONSTRUCT_SWEEP_INTERVAL)},
    }
}
CELERY_WORKER_SEND_TASK_EVENTS = False
# Celery's Django fixup closes every database connection before and after each task unless DB_REUSE_MAX is set
# (a new SQLite connection per job cost ~2 ms of the worker's CPU; PostgreSQL's connect and authentication more).
# With it set, carsite/celery.py applies Django's own per-request rule to each task instead (close_old_connections:
# DATABASE_CONN_MAX_AGE, a broken connection, a transaction left open), so with the default CONN_MAX_AGE of 0 a
# task still gets a fresh connection, and `make run` (600 s) keeps one per worker process.
CELERY_DB_REUSE_MAX = 2**62
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# What a task prints (ml.train's line per epoch) is logged as INFO, not as a WARNING that reads as trouble.
CELERY_WORKER_REDIRECT_STDOUTS_LEVEL = "INFO"

# Email: printed on the console unless an SMTP server is configured.
EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", False)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "carsite <noreply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# HTTPS hardening, for a site behind TLS: on by default in production (Lambda, which sits behind API Gateway's TLS,
# or any site with a public host name in ALLOWED_HOSTS), off for a local site; SECURE_COOKIES=0/1 decides otherwise.
# With it: secure cookies, HTTP redirected to HTTPS, and HSTS (browsers use HTTPS only, for SECURE_HSTS_SECONDS).
SECURE_COOKIES = envbool("SECURE_COOKIES", ON_LAMBDA or not _LOCAL_ONLY)
SESSION_COOKIE_SECURE = SECURE_COOKIES
# Django's database sessions, looked up by a query compiled once per connection (reconstruct/sessions.py).
SESSION_ENGINE = "reconstruct.sessions"
CSRF_COOKIE_SECURE = SECURE_COOKIES
# In production the site sits behind TLS terminated by a proxy (API Gateway, nginx) that must set X-Forwarded-Proto
# (and drop a client's own): without it the HTTPS redirect below would loop.
if envbool("SECURE_PROXY_SSL_HEADER", SECURE_COOKIES):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", SECURE_COOKIES)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if SECURE_COOKIES else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading commits the whole domain to HTTPS in browsers' built-in lists: the owner's decision, off unless asked.
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
if not SECURE_HSTS_PRELOAD:
    SILENCED_SYSTEM_CHECKS = ["security.W021"]  # "SECURE_HSTS_PRELOAD is not True": decided above
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp): scripts only from the site's own static files, never inline; pictures and
# direct uploads may also reach the S3 endpoint (presigned URLs). Inline styles stay allowed (Django's admin uses them).
CSP_S3_DIRECTIVES = ("img-src", "connect-src", "form-action")
_S3_ORIGINS = []
if AWS_STORAGE_BUCKET_NAME:
    from urllib.parse import urlsplit

    _endpoint = urlsplit(envstr("AWS_S3_ENDPOINT_URL"))
    _S3_ORIGINS = [f"{_endpoint.scheme}://{_endpoint.netloc}"] if _endpoint.netloc else ["https://*.amazonaws.com"]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:", "blob:", *_S3_ORIGINS],  # blob: the upload page's preview
        "connect-src": ["'self'", *_S3_ORIGINS],
        "form-action": ["'self'", *_S3_ORIGINS],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# Permissions-Policy (django-permissions-policy): no page here needs these browser features.
PERMISSIONS_POLICY = {
    feature: [] for feature in ("accelerometer", "camera", "geolocation", "gyroscope", "microphone", "payment", "usb")
}

# Guessing is throttled (django-axes): after AXES_FAILURE_LIMIT failures within AXES_COOLOFF_MINUTES, from one address
# or against one account, further tries are refused (429) until the cool-off has passed. This covers the login page,
# the admin's login, API tokens and password resets (reconstruct/throttle.py). A successful login clears the
# failures against that account only (reconstruct/throttle.py: throttle_reset_account): axes' own reset would also
# clear the failures from the login's address, the guesses at other accounts among them.
AXES_FAILURE_LIMIT = envint("AXES_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=envint("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = "reconstruct.throttle.lockout_parameters"
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_CALLABLE = "reconstruct.throttle.lockout_response"
AXES_VERBOSE = False
# Behind this many reverse proxies (nginx, a load balancer), each appending to X-Forwarded-For, the client's
# address is the one they were given (reconstruct/throttle.py: client_address); 0: the connection's own address
# (right locally, and on Lambda, where zappa sets it from API Gateway's sourceIp). A wrong value either lets one
# client pass for many or makes every visitor one address.
TRUSTED_PROXY_COUNT = envint("TRUSTED_PROXY_COUNT", 0, minimum=0)
AXES_CLIENT_IP_CALLABLE = "reconstruct.throttle.client_address"
# reconstruct.auth.ModelBackend: Django's, with the session's user read by a query compiled once per connection.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "reconstruct.auth.ModelBackend"]

LOG_LEVEL = envchoice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # A client's bad request (a Host not in ALLOWED_HOSTS, ...) is one WARNING line, not an ERROR with a traceback.
    "formatters": {
        "plain": {"()": "carsite.log.ClientErrorFormatter", "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "reconstruct": {"level": LOG_LEVEL},
        "carsite": {"level": LOG_LEVEL},
        "django": {"level": "INFO"},
        # The ONNX exporter (a training run's last step) narrates each graph pass at INFO.
        "onnx_ir": {"level": "WARNING"},
        "onnxscript": {"level": "WARNING"},
    },
}
