"""`make loadtest`: the real local stack (``manage.py runlocal``) under Locust; see ``loadtest/__main__.py``.
``python -m loadtest.profile``: one reconstruction's CPU, stage by stage."""

from __future__ import annotations

from pathlib import Path

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def photos_in(folder: Path) -> list[Path]:
    """The photos (JPEG, PNG, WebP) in ``folder``, sorted; SystemExit when there are none."""
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise SystemExit(f"no photos (jpg, png, webp) in {folder}")
    return photos


def site_env(workdir: Path) -> dict[str, str]:
    """Settings (environment variables) for a site whose database, media and run folder are in ``workdir``,
    without the hourly upload limit: many uploads from few accounts are the point of a load test."""
    return {
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "MEDIA_ROOT": str(workdir / "media"),
        "CARSITE_RUN_DIR": str(workdir / "run"),
        "RECONSTRUCT_UPLOADS_PER_HOUR": "0",
        "DEBUG": "0",
        "DJANGO_SETTINGS_MODULE": "carsite.settings",
    }
