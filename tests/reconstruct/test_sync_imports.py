"""A sync-mode process (Lambda) never imports Celery, kombu or billiard: nothing is queued there, and they were
about a seventh of a cold start's imports (issue 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from django.test import Client
from django.contrib.auth import get_user_model
from django.core.management import call_command
call_command("migrate", verbosity=0)
client = Client()
pages = [client.get(path).status_code for path in ("/", "/reconstruct/", "/accounts/login/", "/api/reconstructions/")]
loaded = sorted({name.split(".")[0] for name in sys.modules} & {"celery", "kombu", "billiard", "amqp", "redis"})
print(json.dumps({"pages": pages, "loaded": loaded}))
"""


def test_a_sync_mode_process_serves_pages_without_importing_celery(tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "carsite.settings",
        "RECONSTRUCT_MODE": "sync",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "ALLOWED_HOSTS": "testserver",
    }
    code = "import django; django.setup()\nfrom carsite.wsgi import application\n" + PROBE
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], report
    assert report["pages"] == [200, 302, 200, 401], report
