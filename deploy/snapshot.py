"""The project's code as the bundle gets it: the committed tree (HEAD) of PROJECT_PATHS, never the working tree.

In a git checkout the code is `git archive HEAD`: what is deployed is what a fresh clone of that commit builds, and
neither a stray local file (notes, a key) nor someone's half-made edit ships. Without git (an exported tarball) the
files of PROJECT_PATHS are copied as they are. Tests, caches, dotfiles (.env and friends), databases and training
checkpoints never go.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

from deploy.project import PROJECT_PATHS, ROOT

# Names never copied from PROJECT_PATHS: caches, tests, dotfiles (.env and friends), databases, checkpoints.
PROJECT_IGNORE = ("__pycache__", "*.pyc", "tests", ".*", "*.sqlite3", "*.pt", "*.ckpt")


def in_git() -> bool:
    """True in a git checkout with git installed: the snapshot then comes from HEAD."""
    return (ROOT / ".git").exists() and shutil.which("git") is not None


def git(*args: str) -> bytes:
    """`git ARGS` in the repository root, its stdout; raises subprocess.CalledProcessError when git fails."""
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True).stdout


def _ignored(relative: Path) -> bool:
    ignore = shutil.ignore_patterns(*PROJECT_IGNORE)
    return any(ignore("", [part]) for part in relative.parts)


def worktree_files() -> list[Path]:
    """Without git: every file of PROJECT_PATHS in the working tree, minus PROJECT_IGNORE (absolute, sorted)."""
    found: list[Path] = []
    for relative in PROJECT_PATHS:
        path = ROOT / relative
        candidates = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())
        found.extend(p for p in candidates if not _ignored(p.relative_to(ROOT)))
    return sorted(found)


def head_tree() -> str:
    """`git ls-tree HEAD` of PROJECT_PATHS (git's tree ids name the committed code); "" outside git."""
    return git("ls-tree", "HEAD", "--", *PROJECT_PATHS).decode() if in_git() else ""


def uncommitted_project_changes() -> list[str]:
    """Project files whose working-tree state differs from the commit the bundle is built from."""
    if not in_git():
        return []
    status = git("status", "--porcelain", "--untracked-files=no", "--", *PROJECT_PATHS).decode()
    return sorted(line[3:] for line in status.splitlines() if line.strip())


def project_snapshot(target: Path) -> None:
    """Write the project's runtime files into the empty folder `target` (HEAD in git, else the working tree).

    Uncommitted changes are listed, loudly, as not included. Raises subprocess.CalledProcessError when git fails
    (no commit yet, for one).
    """
    if in_git():
        archive = git("archive", "--format=tar", "HEAD", "--", *PROJECT_PATHS)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            # PEP 706's "data" filter (no absolute paths, no links out of target) where this Python has it: 3.11.4
            # and later, not Debian 12's 3.11.2. The archive is git's own of HEAD either way.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(target, **safe)
        for path in sorted(target.rglob("*"), reverse=True):
            if path.exists() and _ignored(path.relative_to(target)):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        changed = uncommitted_project_changes()
        if changed:
            print(
                f"NOTE: the bundle holds the commit {git('rev-parse', '--short', 'HEAD').decode().strip()}; "
                f"uncommitted changes are not in it: {', '.join(changed)}",
                flush=True,
            )
    else:
        for source in worktree_files():
            destination = target / source.relative_to(ROOT)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
