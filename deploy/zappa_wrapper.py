"""`zappa deploy|update|package STAGE` on the checked trees (what `make lambda-deploy`/`lambda-update` run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deploy.build import build_lock, bundle_build_locked
from deploy.project import ENV_DIR, ROOT, SRC_DIR

USAGE = "usage: python -m deploy zappa deploy|update|package STAGE [zappa options]"


def zappa_run(zappa_args: list[str]) -> int:
    """`zappa deploy|update|package STAGE ...` on the checked trees, never on the project's .venv; zappa's exit code.

    Plain `zappa deploy` in the repository would zip the active virtualenv (.venv: torch, Pillow 13, ...). Here the
    bundle is built and checked first; zappa then packages those very trees (build/lambda-src with VIRTUAL_ENV=
    build/lambda-env), uploads the zip through the stage's s3_bucket (it is over the 50 MB direct-upload limit) and
    creates or updates the function, its role and API Gateway. Commands that package nothing (manage, tail, status,
    invoke, undeploy) run as they are from the repository root.

    Raises SystemExit on other zappa commands and when the bundle fails its check.
    """
    if len(zappa_args) < 2 or zappa_args[0] not in ("deploy", "update", "package"):
        raise SystemExit(USAGE)
    stage = zappa_args[1]
    with build_lock():
        bundle_build_locked(stage, force=False)
        environment = dict(os.environ, VIRTUAL_ENV=str(ENV_DIR))
        zappa = Path(sys.executable).parent / "zappa"
        print("+", "zappa", " ".join(zappa_args), f"(in {SRC_DIR.relative_to(ROOT)})", flush=True)
        return subprocess.run([str(zappa), *zappa_args], cwd=SRC_DIR, env=environment, check=False).returncode
