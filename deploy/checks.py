"""The bundle check: will a zappa zip load and fit on the python3.11 Lambda runtime, and is it clean?

It reads every ELF file in the zip and reports any symbol version newer than the runtime provides (GLIBC 2.26, and
GCC 7's libstdc++/libgcc), a shared library that is neither in the bundle nor on the runtime, torch, boto3, test
code, dev tools, this deploy tooling or secret-looking files, zappa's debug mode, and an unzipped size over Lambda's
250 MB.
"""

from __future__ import annotations

import ast
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from deploy.elf import elf_needs, version_key
from deploy.project import PROJECT_PATHS

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
# AWS: a zip uploaded inline (UpdateFunctionCode's ZipFile) may be at most 50 MB zipped; larger ones go through S3.
MAX_INLINE_ZIP_BYTES = 52_428_800

# Top-level names that must not be in the bundle: the runtime provides boto3; the rest is training, dev or deploy
# tooling.
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
    "deploy",
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


@dataclass
class BundleReport:
    """What the check found in one bundle: sizes (bytes), the glibc versions its ELF files need, problems."""

    zip_path: str
    zipped_bytes: int
    unzipped_bytes: int
    files: int
    elf_files: int
    highest_versions: dict[str, str]  # "GLIBC" -> "2.17"
    largest_packages_mb: dict[str, float]  # top-level name -> MiB unzipped
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no rule failed."""
        return not self.problems

    def summary(self) -> str:
        """The report as printed by the build: sizes in MiB, the highest symbol versions, then OK or the problems."""
        mb = 1024 * 1024
        lines = [
            f"bundle      {self.zip_path}",
            f"zipped      {self.zipped_bytes / mb:.1f} MiB"
            + (
                f" (over the {MAX_INLINE_ZIP_BYTES / mb:.0f} MiB of an inline upload: deployed through s3_bucket)"
                if self.zipped_bytes > MAX_INLINE_ZIP_BYTES
                else ""
            ),
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
    """Inspect a zappa zip without unpacking it to disk; every rule that fails adds a line to `problems`.

    Sizes in the report are in bytes (`largest_packages_mb` in MiB). Raises OSError or zipfile.BadZipFile when
    `zip_path` cannot be read as a zip.
    """
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
