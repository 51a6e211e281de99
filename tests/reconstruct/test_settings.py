"""carsite/settings.py: environment variables are parsed strictly and production secrets are required."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from carsite import settings as project_settings
from tests.support import ROOT

PRINT = "import json; from django.conf import settings as s; print(json.dumps({n: str(getattr(s, n)) for n in %r}))"


def load_settings(env: dict[str, str], *names: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter with exactly these variables (plus PATH)."""
    clean = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "carsite.settings", **env}
    code = "import django; django.setup(); " + PRINT % (names,)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("helper", "value", "message"),
    [
        (lambda: project_settings.envbool("X_TEST", False), "maybe", "X_TEST must be a boolean"),
        (lambda: project_settings.envint("X_TEST", 1), "ten", "X_TEST must be an integer"),
        (lambda: project_settings.envint("X_TEST", 1, minimum=5), "2", "X_TEST must be at least 5"),
        (lambda: project_settings.envchoice("X_TEST", "a", ("a", "b")), "c", "X_TEST must be one of a, b"),
    ],
)
def test_it_refuses_malformed_values(monkeypatch: pytest.MonkeyPatch, helper, value: str, message: str) -> None:
    monkeypatch.setenv("X_TEST", value)
    with pytest.raises(ImproperlyConfigured, match=message):
        helper()


def test_it_reads_lists_and_booleans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_TEST", " a.example , b.example ,")
    assert project_settings.envlist("X_TEST", []) == ["a.example", "b.example"]
    monkeypatch.setenv("X_TEST", "Yes")
    assert project_settings.envbool("X_TEST", False) is True


def test_it_requires_a_secret_key_for_a_public_site(tmp_path) -> None:
    result = load_settings({"ALLOWED_HOSTS": "cars.example.com", "CARSITE_RUN_DIR": str(tmp_path)}, "DEBUG")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_it_defaults_to_a_safe_local_setup(tmp_path) -> None:
    result = load_settings(
        {"CARSITE_RUN_DIR": str(tmp_path)},
        *("DEBUG", "RECONSTRUCT_MODE", "CELERY_BROKER_URL", "STORAGES", "MODEL_CACHE_DIR"),
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["DEBUG"] == "False" and values["RECONSTRUCT_MODE"] == "celery"
    # The site's own model cache, not a folder every site on the host shares.
    assert values["MODEL_CACHE_DIR"] == str(tmp_path / "model-cache")
    assert values["CELERY_BROKER_URL"] == "redis://127.0.0.1:6379/0"
    assert "FileSystemStorage" in values["STORAGES"]
    # A generated key, kept for the next start.
    assert len((tmp_path / "secret_key").read_text()) > 40


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6380/1", "carsite.redis_transport:Transport"),
        # kombu's own for any other scheme: for rediss:// it turns TLS on by the transport's name (review, stop 29).
        ("rediss://cache.example:6380/0", "None"),
        ("sentinel://127.0.0.1:26379", "None"),
    ],
)
def test_a_redis_broker_gets_the_transport_that_keeps_its_client(tmp_path, url: str, transport: str) -> None:
    result = load_settings({"CARSITE_RUN_DIR": str(tmp_path), "CELERY_BROKER_URL": url}, "CELERY_BROKER_TRANSPORT")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["CELERY_BROKER_TRANSPORT"] == transport


def test_it_runs_in_the_request_and_on_s3_on_lambda(tmp_path) -> None:
    env = {
        "AWS_LAMBDA_FUNCTION_NAME": "carsite-dev",
        "SECRET_KEY": "x" * 50,
        "ALLOWED_HOSTS": "abc.execute-api.eu-west-1.amazonaws.com",
        "DATABASE_URL": "postgres://carsite:secret@db.example.com:5432/carsite",
        "AWS_STORAGE_BUCKET_NAME": "carsite-media",
        "CARSITE_RUN_DIR": str(tmp_path),
    }
    result = load_settings(env, "RECONSTRUCT_MODE", "STORAGES", "SESSION_COOKIE_SECURE")
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["RECONSTRUCT_MODE"] == "sync" and values["SESSION_COOKIE_SECURE"] == "True"
    assert "carsite.media_storage.MediaStorage" in values["STORAGES"]
    assert "'file_overwrite': False" in values["STORAGES"]
