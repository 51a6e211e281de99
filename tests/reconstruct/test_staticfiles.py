"""carsite/staticfiles.py: hashed names once collectstatic wrote a manifest, plain names before."""

from __future__ import annotations

import json
from pathlib import Path

from carsite.staticfiles import StaticFilesStorage


def test_it_gives_plain_names_where_nothing_was_collected(tmp_path: Path) -> None:
    storage = StaticFilesStorage(location=tmp_path, base_url="/static/")
    assert storage.url("css/site.css") == "/static/css/site.css"


def test_it_gives_the_hashed_names_collectstatic_recorded(tmp_path: Path) -> None:
    manifest = {"version": "1.1", "paths": {"css/site.css": "css/site.63382037d9cf.css"}, "hash": "x"}
    (tmp_path / "staticfiles.json").write_text(json.dumps(manifest))
    storage = StaticFilesStorage(location=tmp_path, base_url="/static/")
    assert storage.url("css/site.css") == "/static/css/site.63382037d9cf.css"
    assert storage.url("js/added-since.js") == "/static/js/added-since.js"  # not collected: its plain name
