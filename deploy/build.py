"""Build build/lambda-<stage>.zip with `zappa package`, then check it (what `make lambda-package` runs).

`zappa package` zips "the active virtualenv" plus the working directory. The project's own .venv holds torch,
Pillow 13, numpy 2 and onnxruntime 1.32, none of which load on the python3.11 Lambda (Amazon Linux 2, glibc 2.26),
so the bundle is made from two clean trees instead:

- build/lambda-env: a virtualenv-shaped folder (lib/python3.11/site-packages) holding exactly
  requirements-lambda.txt, installed with pip from manylinux2014 wheels for CPython 3.11; zappa is pointed at it
  through VIRTUAL_ENV. zappa's own CLI dependencies stay in .venv, which runs the zappa command.
- build/lambda-src: the project's runtime paths as committed (deploy.snapshot: HEAD; no tests, media, runs,
  virtualenvs, secrets or this deploy tooling) with the collected static files, so a stray or half-edited file in
  the working tree never reaches Lambda.

Both are compiled to bytecode ahead of time: /var/task is read-only, so anything not compiled in the zip is compiled
again on every cold start. The project keeps its sources, with unchecked-hash pycs beside them (zappa writes every zip
entry with a 1980 timestamp, so timestamp-checked pycs would be rejected). The libraries are shipped as sourceless
legacy .pyc files (zappa's own convention: it drops a .py whose .pyc sits next to it), which keeps their tracebacks'
file names and line numbers and saves ~20 MB; migrations keep their sources, as zappa skips .pyc files there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import py_compile
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from deploy.checks import BundleReport, bundle_check
from deploy.project import (
    BUILD_DIR,
    ENV_DIR,
    LAMBDA_TASK_ROOT,
    PYTHON_DIR,
    REQUIREMENTS,
    ROOT,
    RUNTIME_DIR,
    SETTINGS_FILE,
    SRC_DIR,
    bundle_path,
    stage_settings,
)
from deploy.snapshot import head_tree, project_snapshot, worktree_files

PIP_TARGET_ARGS = (
    "--platform",
    "manylinux2014_x86_64",
    "--implementation",
    "cp",
    "--python-version",
    "3.11",
    "--only-binary=:all:",
    "--no-deps",
    "--no-compile",
    "--disable-pip-version-check",
)

# boto3 as the python3.11 runtime provides it (in /var/runtime); only the Lambda test uses this tree.
RUNTIME_REQUIREMENTS = ("boto3==1.44.8", "botocore==1.44.8", "s3transfer==0.19.3", "jmespath==1.1.0")
RUNTIME_REQUIREMENTS_DEPS = ("python-dateutil==2.9.0.post0", "six==1.17.0", "urllib3==2.8.0")

# The build tooling itself: a change to it rebuilds the bundle.
TOOLING_FILES = tuple(sorted(Path(__file__).resolve().parent.glob("*.py")))


def _digest(paths: list[Path], extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def bundle_inputs_digest(stage: str) -> str:
    """Everything the zip depends on, as a SHA-256 hex digest: a rebuild happens exactly when one of these changes.

    In a git checkout the project's code comes from the commit checked out (HEAD), named by git's tree ids.
    """
    project = head_tree()
    files = [REQUIREMENTS, SETTINGS_FILE, *TOOLING_FILES, *([] if project else worktree_files())]
    return _digest(files, extra=f"{stage}\0{sys.version_info[:2]}\0{project}")


def run(command: list[str], **kwargs: object) -> None:
    """Print and run a command; raises subprocess.CalledProcessError when it fails."""
    print("+", " ".join(str(part) for part in command), flush=True)
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def _compile(tree: Path, sourceless: bool = False) -> None:
    """Compile every module under `tree` (see the module docstring for why and how)."""
    # unchecked-hash: the pyc is trusted as is, since the zip's timestamps are all 1980. -s/-p: tracebacks name the
    # files where Lambda unpacks them (/var/task), not this build folder.
    legacy = ["-b"] if sourceless else []
    command = [sys.executable, "-m", "compileall", "-q", "-j", "0", *legacy, "--invalidation-mode", "unchecked-hash"]
    run([*command, "-s", str(tree), "-p", LAMBDA_TASK_ROOT, str(tree)], stdout=subprocess.DEVNULL)
    if not sourceless:
        return
    for source in tree.rglob("*.py"):
        legacy_pyc = source.with_suffix(".pyc")
        if not legacy_pyc.exists():
            continue
        if source.name == "__init__.py" or source.parent.name == "migrations":
            # Kept as source: zappa writes an empty __init__.py into any package folder that lacks one (which would
            # shadow a sourceless __init__.pyc), and it leaves .pyc files out of migrations folders.
            legacy_pyc.unlink()
            py_compile.compile(
                str(source),
                cfile=importlib.util.cache_from_source(str(source)),
                dfile=f"{LAMBDA_TASK_ROOT}/{source.relative_to(tree)}",
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                doraise=True,
            )
        else:
            source.unlink()


def env_build() -> Path:
    """build/lambda-env/lib/python3.11/site-packages = requirements-lambda.txt, for Lambda; reused while unchanged.

    Raises subprocess.CalledProcessError when pip or compileall fails.
    """
    stamp = ENV_DIR / ".requirements-sha256"
    digest = _digest([REQUIREMENTS], extra=str(sys.version_info[:2]))
    if stamp.exists() and stamp.read_text() == digest:
        return ENV_DIR
    fresh = BUILD_DIR / "lambda-env.tmp"
    shutil.rmtree(fresh, ignore_errors=True)
    site_packages = fresh / "lib" / PYTHON_DIR / "site-packages"
    pip = [sys.executable, "-m", "pip", "install", "-q", *PIP_TARGET_ARGS]
    run([*pip, "--target", site_packages, "-r", REQUIREMENTS])
    # pip puts console scripts (django-admin, celery, f2py) in <target>/bin: nothing on Lambda runs them.
    shutil.rmtree(site_packages / "bin", ignore_errors=True)
    _compile(site_packages, sourceless=True)
    (fresh / stamp.name).write_text(digest)
    shutil.rmtree(ENV_DIR, ignore_errors=True)
    fresh.rename(ENV_DIR)
    return ENV_DIR


def runtime_build() -> Path:
    """build/lambda-runtime: boto3 and its dependencies, standing in for the runtime's /var/runtime in tests.

    Reused while RUNTIME_REQUIREMENTS are unchanged; raises subprocess.CalledProcessError when pip fails.
    """
    with build_lock():
        return _runtime_build()


def _runtime_build() -> Path:
    stamp = RUNTIME_DIR / ".requirements"
    wanted = "\n".join(RUNTIME_REQUIREMENTS + RUNTIME_REQUIREMENTS_DEPS)
    if stamp.exists() and stamp.read_text() == wanted:
        return RUNTIME_DIR
    fresh = BUILD_DIR / "lambda-runtime.tmp"
    shutil.rmtree(fresh, ignore_errors=True)
    run([sys.executable, "-m", "pip", "install", "-q", *PIP_TARGET_ARGS, "--target", fresh, *wanted.split("\n")])
    shutil.rmtree(fresh / "bin", ignore_errors=True)
    (fresh / stamp.name).write_text(wanted)
    shutil.rmtree(RUNTIME_DIR, ignore_errors=True)
    fresh.rename(RUNTIME_DIR)
    return RUNTIME_DIR


def src_build() -> Path:
    """build/lambda-src: the project's committed runtime paths, collected static files and zappa_settings.json.

    Raises subprocess.CalledProcessError when git, collectstatic or compileall fails.
    """
    shutil.rmtree(SRC_DIR, ignore_errors=True)
    SRC_DIR.mkdir(parents=True)
    project_snapshot(SRC_DIR)
    shutil.copy2(SETTINGS_FILE, SRC_DIR / SETTINGS_FILE.name)
    # WhiteNoise serves STATIC_ROOT from inside the function; collect (and hash-name) the files now, on the build
    # machine, because /var/task is read-only on Lambda. Only the settings module's own variables reach it.
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "DJANGO_"))}
    for name in ("DATABASE_URL", "STATIC_URL", "FORCE_SCRIPT_NAME", "DEBUG"):
        environment.pop(name, None)
    # A throwaway key, so that settings do not write one into .run/ inside the folder being packaged.
    environment.update(DJANGO_SETTINGS_MODULE="carsite.settings", SECRET_KEY="collectstatic-" + "x" * 40)
    run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=SRC_DIR, env=environment)
    shutil.rmtree(SRC_DIR / ".run", ignore_errors=True)
    _compile(SRC_DIR)
    return SRC_DIR


# zappa package warns of any zip over 50 MiB, "likely to be too large for AWS Lambda. Try setting slim_handler". That
# limit is for zips uploaded inline; ours goes through S3 (deploy.release), where the limit is 250 MB unzipped, which
# the bundle check measures and prints (BundleReport.summary). The warning is dropped, the true figures stay.
ZAPPA_SIZE_WARNING = "Application zip package is likely to be too large for AWS Lambda"


def _zappa_package(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Run `zappa package`, printing its output without the misleading size warning (ZAPPA_SIZE_WARNING).

    Raises subprocess.CalledProcessError when zappa fails.
    """
    print("+", " ".join(command), flush=True)
    # setuptools' distutils shim warns on every zappa start; nothing to act on.
    env = dict(env, PYTHONWARNINGS="ignore:Setuptools is replacing distutils:UserWarning")
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    for line in (completed.stdout + completed.stderr).splitlines():
        if line.strip() and ZAPPA_SIZE_WARNING not in line:
            print(line, flush=True)
    if completed.returncode:
        raise subprocess.CalledProcessError(completed.returncode, command)


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One build at a time: two test runs, or a test run and `make lambda-package`, share the folders in build/.

    Blocks until the lock (build/.lambda-build.lock) is free. Not reentrant: inside it, call bundle_build_locked.
    """
    BUILD_DIR.mkdir(exist_ok=True)
    with (BUILD_DIR / ".lambda-build.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def bundle_build(stage: str, force: bool = False) -> tuple[Path, BundleReport]:
    """Build (or reuse) build/lambda-<stage>.zip with `zappa package`, then check it; SystemExit on a failed check.

    Also writes build/lambda-<stage>.report.json. Raises subprocess.CalledProcessError when a build step fails.
    """
    with build_lock():
        return bundle_build_locked(stage, force)


def bundle_build_locked(stage: str, force: bool = False) -> tuple[Path, BundleReport]:
    """bundle_build for a caller that already holds build_lock()."""
    target = bundle_path(stage)
    stamp = target.with_suffix(".inputs")
    digest = bundle_inputs_digest(stage)
    if not force and target.exists() and stamp.exists() and stamp.read_text() == digest:
        print(f"{target.relative_to(ROOT)} is up to date", flush=True)
    else:
        env_dir = env_build()
        src_dir = src_build()
        stamp.unlink(missing_ok=True)
        partial = target.with_suffix(".zip.tmp")
        partial.unlink(missing_ok=True)
        environment = dict(os.environ, VIRTUAL_ENV=str(env_dir))
        # `zappa package` needs no AWS credentials with use_precompiled_packages false; it only reads the region.
        environment.setdefault("AWS_DEFAULT_REGION", stage_settings(stage)["aws_region"])
        zappa = Path(sys.executable).parent / "zappa"
        _zappa_package([str(zappa), "package", stage, "--output", str(partial)], cwd=src_dir, env=environment)
        partial.rename(target)
    report = bundle_check(target)
    target.with_suffix(".report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(report.summary(), flush=True)
    if not report.ok:
        stamp.unlink(missing_ok=True)
        raise SystemExit(f"{target.relative_to(ROOT)} would not work on Lambda; see the problems above")
    # Only a bundle that passed the check is reused by the next build.
    stamp.write_text(digest)
    return target, report
