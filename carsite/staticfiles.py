"""Static files as WhiteNoise serves them: hashed, compressed names once `collectstatic` has run."""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """WhiteNoise's manifest storage (``css/site.3f1c2a.css`` plus ``.gz``/``.br`` copies, cached for a year
    because a new content gets a new name) once ``collectstatic`` has filled STATIC_ROOT: `make run`, the
    Lambda bundle. In a checkout where nothing was collected (the test suite, a bare ``manage.py``), or for a
    file added since, ``{% static %}`` gives the plain name, which WhiteNoise serves from the source folders
    (WHITENOISE_USE_FINDERS) with a short cache lifetime, instead of failing the page."""

    manifest_strict = False

    def stored_name(self, name: str) -> str:
        try:
            return super().stored_name(name)
        except ValueError:  # not in STATIC_ROOT: Django could not hash a file it cannot find there
            return name
