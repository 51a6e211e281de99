"""A sync-mode process (Lambda) never imports Celery, kombu or billiard: nothing is queued there, and they were
about a seventh of a cold start's imports. With RECONSTRUCT_PRELOAD (on by default on Lambda) the process loads
the model and builds the URL resolver when Django builds its request handler, before the first request (issue 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

MIGRATE = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
"""

PROBE = """
import json, sys
from carsite.wsgi import application  # the site starts (RECONSTRUCT_PRELOAD: the model loads now)
import gc
frozen = gc.get_freeze_count()  # what started with the site is out of the collector's walks (carsite/wsgi.py)
from reconstruct.registry import services
loaded_models = len(services._loaded)
from django.urls import get_resolver
urls_ready = get_resolver()._populated and "reconstruct.views" in sys.modules  # before any request
from django.test import Client
from django.core.management import call_command
call_command("migrate", verbosity=0)
client = Client()
pages = [client.get(path).status_code for path in ("/", "/reconstruct/", "/accounts/login/", "/api/reconstructions/")]
loaded = sorted({name.split(".")[0] for name in sys.modules} & {"celery", "kombu", "billiard", "amqp", "redis"})
report = {"pages": pages, "loaded": loaded, "models": loaded_models, "urls_ready": urls_ready, "frozen": frozen}
print(json.dumps(report))
"""


def _run(tmp_path: Path, code: str, **environment: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "carsite.settings",
        "RECONSTRUCT_MODE": "sync",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "MODEL_CACHE_DIR": str(tmp_path / "models"),
        "ALLOWED_HOSTS": "testserver",
        **environment,
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_sync_mode_process_serves_pages_without_importing_celery(tmp_path: Path) -> None:
    done = _run(tmp_path, "import django; django.setup()\n" + PROBE, RECONSTRUCT_PRELOAD="false")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report.pop("frozen") > 20_000, report  # Django's modules, settings, apps and models at least
    assert report == {"pages": [200, 302, 200, 401], "loaded": [], "models": 0, "urls_ready": False}, report


def test_preload_loads_the_model_when_the_site_starts_and_never_stops_it_from_starting(tmp_path: Path) -> None:
    # A database that is not migrated yet (as when the deploy's `manage migrate` starts a container): the site
    # starts, says why nothing was loaded, and works once migrated.
    done = _run(tmp_path, "import django; django.setup()\n" + PROBE, RECONSTRUCT_PRELOAD="true")
    assert "preload: the model was not loaded at startup (the first request will): OperationalError" in done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["pages"] == [200, 302, 200, 401] and report["loaded"] == [], report

    # Migrated: the shipped model is registered, loaded and run once before any request, and the URL resolver built.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _run(fresh, MIGRATE)
    done = _run(fresh, "import django; django.setup()\n" + PROBE, RECONSTRUCT_PRELOAD="true")
    assert "preload" not in done.stderr, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report.pop("frozen")
    assert report == {"pages": [200, 302, 200, 401], "loaded": [], "models": 1, "urls_ready": True}, report
