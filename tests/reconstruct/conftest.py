"""Fixtures for the site's browser tests: the Chromium fixture (``browser``) is in tests/conftest.py, shared
with the admin's browser tests."""
