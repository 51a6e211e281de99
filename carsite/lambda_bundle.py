"""Build, check and measure the AWS Lambda bundle (what `make lambda-package` runs).

    python -m carsite.lambda_bundle build --stage dev      # -> build/lambda-dev.zip, checked
    python -m carsite.lambda_bundle check build/lambda-dev.zip
    python -m carsite.lambda_bundle measure --stage dev    # cold start and latency inside the bundle, JSON

`zappa package` zips "the active virtualenv" plus the working directory. The project's own .venv holds torch,
Pillow 13, numpy 2 and onnxruntime 1.32, none of which load on the python3.11 Lambda (Amazon Linux 2, glibc 2.26),
so the bundle is made from two clean trees instead:

- build/lambda-env: a virtualenv-shaped folder (lib/python3.11/site-packages) holding exactly
  requirements-lambda.txt, installed with pip from manylinux2014 wheels for CPython 3.11; zappa is pointed at it
  through VIRTUAL_ENV. zappa's own CLI dependencies stay in .venv, which runs the zappa command.
- build/lambda-src: the project's runtime paths as committed (HEAD; no tests, media, runs, virtualenvs or secrets)
  with the collected static files, so a stray or half-edited file in the working tree never reaches Lambda.

Both are compiled to bytecode ahead of time: /var/task is read-only, so anything not compiled in the zip is compiled
again on every cold start. The project keeps its sources, with unchecked-hash pycs beside them (zappa writes every zip
entry with a 1980 timestamp, so timestamp-checked pycs would be rejected). The libraries are shipped as sourceless
legacy .pyc files (zappa's own convention: it drops a .py whose .pyc sits next to it), which keeps their tracebacks'
file names and line numbers and saves ~20 MB; migrations keep their sources, as zappa skips .pyc files there.

The check reads every ELF file in the zip and fails the build on any symbol version newer than the python3.11
runtime provides (GLIBC 2.26, and GCC 7's libstdc++/libgcc), on a shared library that is neither in the bundle nor
on the runtime, on torch, boto3, test code, dev tools or secret-looking files, and on an unzipped size over
Lambda's 250 MB.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import hashlib
import importlib.util
import io
import json
import os
import py_compile
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
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

# What the bundle needs of the project; everything else in the working tree stays out.
PROJECT_PATHS = ("carsite", "reconstruct", "ml", "templates", "static", "manage.py")
# Names never copied from those paths: caches, tests, this build script, dotfiles (.env and friends).
PROJECT_IGNORE = ("__pycache__", "*.pyc", "tests", "lambda_bundle.py", ".*", "*.sqlite3", "*.pt", "*.ckpt")

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

# Lambda python3.11 = Amazon Linux 2: glibc 2.26, GCC 7.3's libstdc++ (GLIBCXX_3.4.24, CXXABI_1.3.11) and libgcc_s.
SYMBOL_VERSION_CEILINGS = {"GLIBC": (2, 26), "GLIBCXX": (3, 4, 24), "CXXABI": (1, 3, 11), "GCC": (7, 0, 0)}
# Shared libraries the runtime has in /lib64 (the manylinux2014 policy list, which Amazon Linux 2 satisfies).
SYSTEM_LIBRARIES = {
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libutil.so.1",
    "libnsl.so.1",
    "libresolv.so.2",
    "libstdc++.so.6",
    "libgcc_s.so.1",
    "libz.so.1",
}
# AWS: a function's unzipped deployment package may be at most 250 MB (262,144,000 bytes).
MAX_UNZIPPED_BYTES = 262_144_000
TARGET_UNZIPPED_BYTES = 150 * 1024 * 1024

# Top-level names that must not be in the bundle: the runtime provides boto3; the rest is training or dev tooling.
FORBIDDEN_TOP_LEVEL = {
    "torch",
    "torchvision",
    "functorch",
    "triton",
    "nvidia",
    "boto3",
    "botocore",
    "s3transfer",
    "pytest",
    "_pytest",
    "pytest_django",
    "ruff",
    "moto",
    "playwright",
    "pip",
    "setuptools",
    "wheel",
    "troposphere",
    "placebo",
    "sympy",
    "onnx",
    "onnxscript",
    "matplotlib",
    "IPython",
    ".venv",
    "media",
    "runs",
    "build",
    "node_modules",
    ".git",
}
SECRET_FILE_PATTERNS = (
    re.compile(r"(^|/)\.env(\.|$)"),
    re.compile(r"\.(pem|key|p12|pfx)$"),
    re.compile(r"(^|/)id_(rsa|ed25519|ecdsa)"),
    re.compile(r"\.sqlite3$"),
    re.compile(r"(^|/)\.aws/"),
    re.compile(r"(^|/)\.run/"),
    re.compile(r"secret_key$"),
)
SECRET_CONTENT_PATTERNS = (
    re.compile(rb"AKIA[0-9A-Z]{16}"),
    re.compile(rb"-----BEGIN (RSA |EC |OPENSSH )?PRIVATE KEY-----"),
)
# Environment variables baked into the zip (zappa's environment_variables) must not carry secrets.
SECRET_ENV_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|DATABASE_URL|CREDENTIAL|PRIVATE", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------------------
# ELF: which symbol versions and shared libraries a binary needs.


@dataclass
class ElfNeeds:
    libraries: list[str]  # DT_NEEDED sonames
    versions: list[str]  # e.g. GLIBC_2.17, GLIBCXX_3.4.19


def elf_needs(data: bytes) -> ElfNeeds | None:
    """Read DT_NEEDED and the version-needs table (.gnu.version_r) of a 64-bit little-endian ELF file.

    Returns None for anything that is not such a file. readelf would do, but binutils is not on every machine
    that builds the bundle, and the format is small.
    """
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def string_at(section_index: int, offset: int) -> str:
        start = sections[section_index][4] + offset
        return data[start : data.index(b"\0", start)].decode("ascii", "replace")

    libraries: list[str] = []
    versions: list[str] = []
    for _name, sh_type, _flags, _addr, offset, size, link, info, _align, _entsize in sections:
        if sh_type == 6:  # SHT_DYNAMIC: (d_tag, d_val) pairs; DT_NEEDED is tag 1
            for pos in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", data, pos)
                if tag == 0:
                    break
                if tag == 1:
                    libraries.append(string_at(link, value))
        elif sh_type == 0x6FFFFFFE:  # SHT_GNU_verneed: `info` Verneed entries, each with a chain of Vernaux
            pos = offset
            for _ in range(info):
                _version, count, _file, aux, next_need = struct.unpack_from("<HHIII", data, pos)
                aux_pos = pos + aux
                for _ in range(count):
                    _hash, _flags2, _other, name, next_aux = struct.unpack_from("<IHHII", data, aux_pos)
                    versions.append(string_at(link, name))
                    aux_pos += next_aux
                pos += next_need
    return ElfNeeds(libraries=libraries, versions=versions)


def version_key(symbol_version: str) -> tuple[str, tuple[int, ...]] | None:
    """GLIBC_2.17 -> ("GLIBC", (2, 17)); None for GLIBC_PRIVATE and other unnumbered names."""
    match = re.fullmatch(r"([A-Z]+)_(\d+(?:\.\d+)*)", symbol_version)
    if not match:
        return None
    return match.group(1), tuple(int(part) for part in match.group(2).split("."))


# ---------------------------------------------------------------------------------------------------------------------
# The check.


@dataclass
class BundleReport:
    zip_path: str
    zipped_bytes: int
    unzipped_bytes: int
    files: int
    elf_files: int
    highest_versions: dict[str, str]  # "GLIBC" -> "2.17"
    largest_packages_mb: dict[str, float]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        mb = 1024 * 1024
        lines = [
            f"bundle      {self.zip_path}",
            f"zipped      {self.zipped_bytes / mb:.1f} MiB",
            f"unzipped    {self.unzipped_bytes / mb:.1f} MiB in {self.files} files "
            f"(Lambda limit {MAX_UNZIPPED_BYTES / mb:.0f} MiB, aim < {TARGET_UNZIPPED_BYTES / mb:.0f} MiB)",
            f"ELF files   {self.elf_files}; highest symbol versions needed: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.highest_versions.items())),
            "largest     " + ", ".join(f"{name} {size:.1f}" for name, size in self.largest_packages_mb.items()),
        ]
        if self.problems:
            lines.append(f"FAILED      {len(self.problems)} problem(s):")
            lines.extend(f"  - {problem}" for problem in self.problems)
        else:
            lines.append("OK          loads on the python3.11 Lambda runtime (glibc 2.26)")
        return "\n".join(lines)


def bundle_check(zip_path: Path) -> BundleReport:
    """Inspect a zappa zip without unpacking it to disk; every rule that fails adds a line to `problems`."""
    problems: list[str] = []
    highest: dict[str, tuple[int, ...]] = {}
    sizes_by_top: dict[str, int] = {}
    elf_count = 0
    needed: dict[str, set[str]] = {}
    with zipfile.ZipFile(zip_path) as archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        names = {info.filename.rsplit("/", 1)[-1] for info in infos}
        for info in infos:
            name = info.filename
            parts = name.split("/")
            sizes_by_top[parts[0]] = sizes_by_top.get(parts[0], 0) + info.file_size
            if {parts[0], parts[0].split("-")[0]} & FORBIDDEN_TOP_LEVEL:
                problems.append(f"forbidden in the bundle: {name}")
            if "tests" in parts[:-1] or re.fullmatch(r"(test_.*|.*_test|conftest)\.py", parts[-1]):
                problems.append(f"test code in the bundle: {name}")
            if any(pattern.search(name) for pattern in SECRET_FILE_PATTERNS):
                problems.append(f"secret-looking file in the bundle: {name}")
            with archive.open(info) as member:
                head = member.read(4)
            if head == b"\x7fELF":
                elf_count += 1
                needs = elf_needs(archive.read(info))
                if needs is None:
                    problems.append(f"not a 64-bit little-endian ELF file: {name}")
                    continue
                for library in needs.libraries:
                    needed.setdefault(library, set()).add(name)
                for symbol_version in needs.versions:
                    key = version_key(symbol_version)
                    if key is None or key[0] not in SYMBOL_VERSION_CEILINGS:
                        continue
                    family, version = key
                    highest[family] = max(highest.get(family, version), version)
                    if version > SYMBOL_VERSION_CEILINGS[family]:
                        problems.append(f"{name} needs {symbol_version} (the python3.11 runtime has older)")
            elif parts[0] in PROJECT_PATHS and info.file_size < 5_000_000:
                content = archive.read(info)
                if any(pattern.search(content) for pattern in SECRET_CONTENT_PATTERNS):
                    problems.append(f"credential-looking content in {name}")
        if "zappa_settings.py" in names:
            problems.extend(_settings_problems(archive.read("zappa_settings.py").decode()))
        else:
            problems.append("zappa_settings.py missing: not a zappa package")
    for library, users in sorted(needed.items()):
        if library not in names and library not in SYSTEM_LIBRARIES:
            problems.append(f"{sorted(users)[0]} needs {library}, which neither the bundle nor the runtime has")
    unzipped = sum(sizes_by_top.values())
    if unzipped >= MAX_UNZIPPED_BYTES:
        problems.append(f"unzipped size {unzipped} bytes is over Lambda's limit of {MAX_UNZIPPED_BYTES}")
    largest = sorted(sizes_by_top.items(), key=lambda item: -item[1])[:8]
    return BundleReport(
        zip_path=str(zip_path),
        zipped_bytes=zip_path.stat().st_size,
        unzipped_bytes=unzipped,
        files=len(infos),
        elf_files=elf_count,
        highest_versions={family: ".".join(map(str, version)) for family, version in highest.items()},
        largest_packages_mb={name: round(size / 1024 / 1024, 1) for name, size in largest},
        problems=problems,
    )


def _settings_problems(settings_source: str) -> list[str]:
    """zappa_settings.py (generated into the zip) bakes in `environment_variables`: no secrets there."""
    problems = []
    match = re.search(r"^ENVIRONMENT_VARIABLES=(\{.*\})$", settings_source, re.MULTILINE)
    environment = ast.literal_eval(match.group(1)) if match else {}
    for name in environment:
        if SECRET_ENV_NAME.search(name):
            problems.append(f"zappa_settings.json stage environment_variables holds a secret: {name}")
    if "DEBUG=True" in settings_source.splitlines():
        problems.append("zappa debug is on: the handler would log every raw event, uploaded images included")
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# The build.


def _digest(paths: list[Path], extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def _in_git() -> bool:
    return (ROOT / ".git").exists() and shutil.which("git") is not None


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True).stdout


def _ignored(relative: Path) -> bool:
    ignore = shutil.ignore_patterns(*PROJECT_IGNORE)
    return any(ignore("", [part]) for part in relative.parts)


def _worktree_files() -> list[Path]:
    """Without git: every file of PROJECT_PATHS, minus PROJECT_IGNORE."""
    found: list[Path] = []
    for relative in PROJECT_PATHS:
        path = ROOT / relative
        candidates = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())
        found.extend(p for p in candidates if not _ignored(p.relative_to(ROOT)))
    return sorted(found)


def uncommitted_project_changes() -> list[str]:
    """Project files whose working-tree state differs from the commit the bundle is built from."""
    if not _in_git():
        return []
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *PROJECT_PATHS).decode()
    return sorted(line[3:] for line in status.splitlines() if line.strip())


def bundle_inputs_digest(stage: str) -> str:
    """Everything the zip depends on: a rebuild happens exactly when one of these changes.

    In a git checkout the project's code comes from the commit checked out (HEAD), named by git's tree ids.
    """
    project = _git("ls-tree", "HEAD", "--", *PROJECT_PATHS).decode() if _in_git() else ""
    files = [REQUIREMENTS, SETTINGS_FILE, Path(__file__).resolve(), *([] if project else _worktree_files())]
    return _digest(files, extra=f"{stage}\0{sys.version_info[:2]}\0{project}")


def stage_settings(stage: str) -> dict[str, object]:
    """A stage of zappa_settings.json as zappa resolves it (`extends` merged in, one level of keys)."""
    stages = json.loads(SETTINGS_FILE.read_text())
    if stage not in stages:
        raise SystemExit(f"zappa_settings.json has no stage {stage!r} (it has {', '.join(stages)})")
    settings = stages[stage]
    parent = settings.get("extends")
    return {**stage_settings(parent), **settings} if parent else settings


def bundle_path(stage: str) -> Path:
    return BUILD_DIR / f"lambda-{stage}.zip"


def _run(command: list[str], **kwargs: object) -> None:
    print("+", " ".join(str(part) for part in command), flush=True)
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def _compile(tree: Path, sourceless: bool = False) -> None:
    """Compile every module under `tree` (see the module docstring for why and how)."""
    # unchecked-hash: the pyc is trusted as is, since the zip's timestamps are all 1980. -s/-p: tracebacks name the
    # files where Lambda unpacks them (/var/task), not this build folder.
    legacy = ["-b"] if sourceless else []
    command = [sys.executable, "-m", "compileall", "-q", "-j", "0", *legacy, "--invalidation-mode", "unchecked-hash"]
    _run([*command, "-s", str(tree), "-p", LAMBDA_TASK_ROOT, str(tree)], stdout=subprocess.DEVNULL)
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
    """build/lambda-env/lib/python3.11/site-packages = requirements-lambda.txt, for Lambda; reused while unchanged."""
    stamp = ENV_DIR / ".requirements-sha256"
    digest = _digest([REQUIREMENTS], extra=str(sys.version_info[:2]))
    if stamp.exists() and stamp.read_text() == digest:
        return ENV_DIR
    fresh = BUILD_DIR / "lambda-env.tmp"
    shutil.rmtree(fresh, ignore_errors=True)
    site_packages = fresh / "lib" / PYTHON_DIR / "site-packages"
    pip = [sys.executable, "-m", "pip", "install", "-q", *PIP_TARGET_ARGS]
    _run([*pip, "--target", site_packages, "-r", REQUIREMENTS])
    # pip puts console scripts (django-admin, celery, f2py) in <target>/bin: nothing on Lambda runs them.
    shutil.rmtree(site_packages / "bin", ignore_errors=True)
    _compile(site_packages, sourceless=True)
    (fresh / stamp.name).write_text(digest)
    shutil.rmtree(ENV_DIR, ignore_errors=True)
    fresh.rename(ENV_DIR)
    return ENV_DIR


def runtime_build() -> Path:
    """build/lambda-runtime: boto3 and its dependencies, standing in for the runtime's /var/runtime in tests."""
    with _build_lock():
        return _runtime_build()


def _runtime_build() -> Path:
    stamp = RUNTIME_DIR / ".requirements"
    wanted = "\n".join(RUNTIME_REQUIREMENTS + RUNTIME_REQUIREMENTS_DEPS)
    if stamp.exists() and stamp.read_text() == wanted:
        return RUNTIME_DIR
    fresh = BUILD_DIR / "lambda-runtime.tmp"
    shutil.rmtree(fresh, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "-q", *PIP_TARGET_ARGS, "--target", fresh, *wanted.split("\n")])
    shutil.rmtree(fresh / "bin", ignore_errors=True)
    (fresh / stamp.name).write_text(wanted)
    shutil.rmtree(RUNTIME_DIR, ignore_errors=True)
    fresh.rename(RUNTIME_DIR)
    return RUNTIME_DIR


def src_build() -> Path:
    """build/lambda-src: the project's runtime paths, collected static files and zappa_settings.json.

    In a git checkout the code is the committed tree (`git archive HEAD`): what is deployed is what a fresh clone
    of that commit builds, and neither a stray local file (notes, a key) nor someone's half-made edit ships.
    Uncommitted changes are listed, loudly, as not included.
    """
    shutil.rmtree(SRC_DIR, ignore_errors=True)
    SRC_DIR.mkdir(parents=True)
    if _in_git():
        archive = _git("archive", "--format=tar", "HEAD", "--", *PROJECT_PATHS)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(SRC_DIR, filter="data")
        for path in sorted(SRC_DIR.rglob("*"), reverse=True):
            if path.exists() and _ignored(path.relative_to(SRC_DIR)):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        changed = uncommitted_project_changes()
        if changed:
            print(
                f"NOTE: the bundle holds the commit {_git('rev-parse', '--short', 'HEAD').decode().strip()}; "
                f"uncommitted changes are not in it: {', '.join(changed)}",
                flush=True,
            )
    else:
        for source in _worktree_files():
            target = SRC_DIR / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shutil.copy2(SETTINGS_FILE, SRC_DIR / SETTINGS_FILE.name)
    # WhiteNoise serves STATIC_ROOT from inside the function; collect (and hash-name) the files now, on the build
    # machine, because /var/task is read-only on Lambda. Only the settings module's own variables reach it.
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "DJANGO_"))}
    for name in ("DATABASE_URL", "STATIC_URL", "FORCE_SCRIPT_NAME", "DEBUG"):
        environment.pop(name, None)
    # A throwaway key, so that settings do not write one into .run/ inside the folder being packaged.
    environment.update(DJANGO_SETTINGS_MODULE="carsite.settings", SECRET_KEY="collectstatic-" + "x" * 40)
    _run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=SRC_DIR, env=environment)
    shutil.rmtree(SRC_DIR / ".run", ignore_errors=True)
    _compile(SRC_DIR)
    return SRC_DIR


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time: two test runs, or a test run and `make lambda-package`, share the folders in build/."""
    BUILD_DIR.mkdir(exist_ok=True)
    with (BUILD_DIR / ".lambda-build.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def bundle_build(stage: str, force: bool = False) -> tuple[Path, BundleReport]:
    """Build (or reuse) build/lambda-<stage>.zip with `zappa package`, then check it; SystemExit on a failed check."""
    with _build_lock():
        return _bundle_build(stage, force)


def _bundle_build(stage: str, force: bool) -> tuple[Path, BundleReport]:
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
        _run([str(zappa), "package", stage, "--output", str(partial)], cwd=src_dir, env=environment)
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


def zappa_run(zappa_args: list[str]) -> int:
    """`zappa deploy|update|package STAGE ...` on the checked trees, never on the project's .venv.

    Plain `zappa deploy` in the repository would zip the active virtualenv (.venv: torch, Pillow 13, ...). Here the
    bundle is built and checked first; zappa then packages those very trees (build/lambda-src with VIRTUAL_ENV=
    build/lambda-env), uploads the zip through the stage's s3_bucket (it is over the 50 MB direct-upload limit) and
    creates or updates the function, its role and API Gateway. Commands that package nothing (manage, tail, status,
    invoke, undeploy) run as they are from the repository root.
    """
    if len(zappa_args) < 2 or zappa_args[0] not in ("deploy", "update", "package"):
        raise SystemExit("usage: python -m carsite.lambda_bundle zappa deploy|update|package STAGE [zappa options]")
    stage = zappa_args[1]
    with _build_lock():
        _bundle_build(stage, force=False)
        environment = dict(os.environ, VIRTUAL_ENV=str(ENV_DIR))
        zappa = Path(sys.executable).parent / "zappa"
        print("+", "zappa", " ".join(zappa_args), f"(in {SRC_DIR.relative_to(ROOT)})", flush=True)
        return subprocess.run([str(zappa), *zappa_args], cwd=SRC_DIR, env=environment, check=False).returncode


# ---------------------------------------------------------------------------------------------------------------------
# Measuring inside the bundle's interpreter.

_MEASURE_SCRIPT = r"""
import io, json, resource, sys, time
sys.path[:0] = [BUNDLE, RUNTIME]
times = {}
t0 = time.perf_counter()
import numpy, onnxruntime, PIL.Image
from ml import runtime
times["import_ml_s"] = time.perf_counter() - t0
t0 = time.perf_counter()
model = runtime.load_model(runtime.DEFAULT_MODEL_DIR)
times["model_load_s"] = time.perf_counter() - t0
image = PIL.Image.new("RGB", (640, 480), (90, 120, 160))
t0 = time.perf_counter()
result = model.reconstruct(image)
times["first_reconstruction_s"] = time.perf_counter() - t0
warm = []
for _ in range(REPEATS):
    t0 = time.perf_counter()
    model.reconstruct(image)
    warm.append(time.perf_counter() - t0)
warm.sort()
times["warm_reconstruction_median_s"] = warm[len(warm) // 2]
times["cold_start_ml_s"] = times["import_ml_s"] + times["model_load_s"] + times["first_reconstruction_s"]
t0 = time.perf_counter()
import django
from django.conf import settings
django.setup()
from django.core.wsgi import get_wsgi_application
get_wsgi_application()
import reconstruct.services
times["django_setup_s"] = time.perf_counter() - t0
times["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
times["versions"] = {"onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__,
                     "model": model.version}
print(json.dumps(times))
"""


def bundle_measure(stage: str, repeats: int = 20) -> dict[str, object]:
    """Cold start (imports, model load, first reconstruction, Django set-up) and warm latency in an isolated
    interpreter (`python -I -S`) that sees only the unzipped bundle and boto3, as on Lambda."""
    target, _report = bundle_build(stage)
    runtime_dir = runtime_build()
    with tempfile.TemporaryDirectory(prefix="lambda-measure-") as scratch:
        bundle_dir = Path(scratch) / "task"
        with zipfile.ZipFile(target) as archive:
            archive.extractall(bundle_dir)
        script = _MEASURE_SCRIPT.replace("BUNDLE", repr(str(bundle_dir))).replace("RUNTIME", repr(str(runtime_dir)))
        script = script.replace("REPEATS", str(repeats))
        environment = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "AWS_LAMBDA_FUNCTION_NAME": f"carsite-{stage}",
            "AWS_REGION": "us-east-1",
            "DJANGO_SETTINGS_MODULE": "carsite.settings",
            "SECRET_KEY": "measure-only-" + "x" * 40,
            "DATABASE_URL": "postgres://measure@127.0.0.1:9/measure",
        }
        completed = subprocess.run(
            [sys.executable, "-I", "-S", "-c", script],
            cwd=bundle_dir,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
    if completed.returncode != 0:
        raise SystemExit(completed.stderr)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m carsite.lambda_bundle", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build and check build/lambda-<stage>.zip")
    build.add_argument("--stage", default="dev")
    build.add_argument("--force", action="store_true", help="rebuild even if the inputs are unchanged")
    check = commands.add_parser("check", help="check a zappa zip")
    check.add_argument("zip", type=Path)
    measure = commands.add_parser("measure", help="cold start and latency inside the bundle, as JSON")
    measure.add_argument("--stage", default="dev")
    measure.add_argument("--out", type=Path, help="also write the JSON here")
    commands.add_parser("runtime", help="build build/lambda-runtime (boto3 as the Lambda runtime provides it)")
    run_zappa = commands.add_parser(
        "zappa", help="build and check the bundle, then run zappa on it (deploy/update/package STAGE ...)"
    )
    run_zappa.add_argument("zappa_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "build":
        bundle_build(args.stage, force=args.force)
    elif args.command == "check":
        report = bundle_check(args.zip)
        print(report.summary())
        if not report.ok:
            raise SystemExit(1)
    elif args.command == "measure":
        result = json.dumps(bundle_measure(args.stage), indent=2)
        print(result)
        if args.out:
            args.out.write_text(result + "\n")
    elif args.command == "runtime":
        print(runtime_build())
    elif args.command == "zappa":
        raise SystemExit(zappa_run(args.zappa_args))


if __name__ == "__main__":
    main()
