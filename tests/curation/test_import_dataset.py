from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from reconstruct.curation.models import DatasetImage

pytestmark = pytest.mark.django_db


def test_it_imports_a_folder_with_a_progress_bar_and_a_summary(media, active_model, staff, tmp_path, draw, near_copy):
    folder = tmp_path / "cars"
    (folder / "more").mkdir(parents=True)
    for seed in range(5):
        (folder / f"car{seed}.jpg").write_bytes(draw(seed))
    (folder / "dupe.jpg").write_bytes(draw(0))
    (folder / "near.jpg").write_bytes(near_copy(draw(1)))
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "more" / "deep.jpg").write_bytes(draw(9))
    out, err = io.StringIO(), io.StringIO()
    call_command("import_dataset", str(folder), "--user", "sam", "--report", stdout=out, stderr=err)
    assert DatasetImage.objects.filter(source="import", status="pending").count() == 6
    assert DatasetImage.objects.get(original_name="car0.jpg").added_by == staff
    summary = out.getvalue()
    assert "Added 6 photos as pending, skipped 2 (" in summary and "1 exact duplicates" in summary
    assert "skipped dupe.jpg: exact duplicate of #" in summary
    assert "flagged near.jpg" in summary and "near duplicate of #" in summary
    assert "8/8" in err.getvalue()  # the progress bar's last line

    call_command("import_dataset", str(folder), "--recursive", stdout=out, stderr=err)
    assert DatasetImage.objects.count() == 7  # only more/deep.jpg is new: importing again adds nothing twice


def test_it_says_what_is_wrong_with_the_folder(media, db, tmp_path) -> None:
    with pytest.raises(CommandError, match="no such folder"):
        call_command("import_dataset", str(tmp_path / "missing"))
    with pytest.raises(CommandError, match="no JPEG, PNG or WebP photos"):
        call_command("import_dataset", str(tmp_path))
    with pytest.raises(CommandError, match="no user named"):
        call_command("import_dataset", str(tmp_path), "--user", "nobody")
