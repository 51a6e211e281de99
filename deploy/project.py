"""Where things are: the project's runtime paths, the build folders in build/, and zappa_settings.json's stages."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build"
ENV_DIR = BUILD_DIR / "lambda-env"
SRC_DIR = BUILD_DIR / "lambda-src"
RUNTIME_DIR = BUILD_DIR / "lambda-runtime"
REQUIREMENTS = ROOT / "requirements-lambda.txt"
SETTINGS_FILE = ROOT / "zappa_settings.json"
PYTHON_DIR = "python3.11"
LAMBDA_TASK_ROOT = "/var/task"  # where Lambda unpacks the zip

# What the bundle needs of the project; everything else in the working tree (deploy/ included) stays out.
PROJECT_PATHS = ("carsite", "reconstruct", "ml", "templates", "static", "manage.py")


def stage_settings(stage: str) -> dict[str, object]:
    """A stage of zappa_settings.json as zappa resolves it (`extends` merged in, one level of keys).

    Raises SystemExit when the file has no such stage.
    """
    stages = json.loads(SETTINGS_FILE.read_text())
    if stage not in stages:
        raise SystemExit(f"zappa_settings.json has no stage {stage!r} (it has {', '.join(stages)})")
    settings = stages[stage]
    parent = settings.get("extends")
    return {**stage_settings(parent), **settings} if parent else settings


def bundle_path(stage: str) -> Path:
    """build/lambda-<stage>.zip, the stage's checked bundle."""
    return BUILD_DIR / f"lambda-{stage}.zip"
