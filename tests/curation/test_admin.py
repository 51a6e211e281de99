from __future__ import annotations

import io
import json
import zipfile

import pytest
from django.urls import reverse

from reconstruct.curation.models import DatasetImage, TrainingRun
from reconstruct.curation.selectors import dataset_approved
from reconstruct.curation.services.arrival import dataset_image_add
from reconstruct.curation.services.review import dataset_image_approve
from reconstruct.models import ModelActivation

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def _add(draw, seed: int, **kwargs) -> DatasetImage:
    return dataset_image_add(data=draw(seed, **kwargs), name=f"car{seed}.jpg", source="bulk").image


def test_it_lists_photos_with_thumbnails_filters_and_counts(staff_client, active_model, draw, near_copy) -> None:
    first = _add(draw, 1)
    dataset_image_add(data=near_copy(draw(1)), name="copy.jpg", source="bulk")
    _add(draw, 2, grey=True)
    url = reverse("admin:curation_datasetimage_changelist")
    page = staff_client.get(url).content.decode()
    assert reverse("admin:curation_datasetimage_file", args=[first.pk, "thumbnail"]) in page
    assert f"near dup. of #{first.pk}" in page
    assert "<strong>0</strong> approved, 3 pending" in page
    for query, expected in (("near_duplicate=yes", 1), ("greyscale=yes", 1), ("status__exact=pending", 3)):
        response = staff_client.get(f"{url}?{query}")
        assert response.context["cl"].result_count == expected, query
    thumb = staff_client.get(reverse("admin:curation_datasetimage_file", args=[first.pk, "thumbnail"]))
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg"


def test_it_reviews_through_bulk_actions_and_page_buttons(staff_client, active_model, draw) -> None:
    a, b = _add(draw, 1), _add(draw, 2)
    url = reverse("admin:curation_datasetimage_changelist")
    staff_client.post(url, {"action": "approve", "_selected_action": [a.pk, b.pk]})
    staff_client.post(url, {"action": "flip", "_selected_action": [b.pk]})
    assert set(dataset_approved().values_list("parent", flat=True)) == {None, b.pk}
    staff_client.post(reverse("admin:curation_datasetimage_review", args=[a.pk]), {"action": "reject"})
    staff_client.post(reverse("admin:curation_datasetimage_review", args=[a.pk]), {"action": "left"})
    a.refresh_from_db()
    assert (a.status, a.orientation) == ("rejected", "left")
    page = staff_client.get(reverse("admin:curation_datasetimage_change", args=[b.pk])).content.decode()
    assert "older version" in page


def test_it_uploads_files_and_a_zip_and_reports_as_json(staff_client, active_model, draw) -> None:
    url = reverse("admin:curation_datasetimage_upload")
    assert "Upload photos" in staff_client.get(url).content.decode()
    files = [io.BytesIO(draw(1)), io.BytesIO(draw(1)), io.BytesIO(b"nope")]
    for i, f in enumerate(files):
        f.name = f"photo{i}.jpg"
    response = staff_client.post(url, {"files": files}, headers={"Accept": "application/json"})
    report = response.json()
    assert (report["added"], report["skipped"]) == (1, 2)
    assert report["results"][1]["skipped"].startswith("exact duplicate of #")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/b.png", draw(5, fmt="PNG"))
    archive.seek(0)
    archive.name = "photos.zip"
    page = staff_client.post(url, {"archive": archive}).content.decode()  # the plain form, no script
    assert "1 added, 0 skipped" in page
    assert DatasetImage.objects.filter(source="bulk").count() == 2
    bad = io.BytesIO(b"not a zip")
    bad.name = "x.zip"
    response = staff_client.post(url, {"archive": bad}, headers={"Accept": "application/json"})
    assert response.status_code == 400 and "not a zip" in response.json()["error"]


def test_it_keeps_the_curation_pages_from_non_staff(client, alice, active_model, draw) -> None:
    image = _add(draw, 1)
    client.force_login(alice)
    for url in (
        reverse("admin:curation_datasetimage_upload"),
        reverse("admin:curation_datasetimage_export"),
        reverse("admin:curation_datasetimage_file", args=[image.pk, "file"]),
        reverse("admin:reconstruct_modelversion_compare"),
    ):
        assert client.get(url).status_code == 302  # to the admin login
    assert client.post(reverse("admin:reconstruct_modelversion_activate", args=[active_model.pk])).status_code == 302


def test_it_exports_the_approved_set_from_the_admin(staff_client, active_model, draw) -> None:
    a = _add(draw, 1)
    _add(draw, 2)
    dataset_image_approve(images=DatasetImage.objects.filter(pk=a.pk), user=None)
    response = staff_client.get(reverse("admin:curation_datasetimage_export"))
    assert response["Content-Disposition"].startswith('attachment; filename="carsite-approved-')
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert [row["id"] for row in manifest["images"]] == [a.pk]


def test_it_starts_a_run_from_the_form_and_shows_its_progress(staff_client, active_model, settings, draw) -> None:
    settings.CURATION_MIN_TRAINING_IMAGES = 2
    for seed in range(3):
        _add(draw, seed)
    dataset_image_approve(images=DatasetImage.objects.all(), user=None)
    add_url = reverse("admin:curation_trainingrun_add")
    assert "quick: 64\N{MULTIPLICATION SIGN}32 input" in staff_client.get(add_url).content.decode()
    response = staff_client.post(add_url, {"config": "quick", "epochs": 2})
    run = TrainingRun.objects.get()
    assert response["Location"] == reverse("admin:curation_trainingrun_change", args=[run.pk])
    assert (run.epochs, run.snapshot.image_count) == (2, 3)
    TrainingRun.objects.filter(pk=run.pk).update(
        status="running", history=[{"epoch": 1, "train_mse": 0.05, "val_mse": 0.04, "train_kl": 9.0, "val_kl": 8.0}]
    )
    data = staff_client.get(reverse("admin:curation_trainingrun_progress", args=[run.pk])).json()
    assert data["status"] == "running" and "<svg" in data["chart_svg"]
    page = staff_client.get(reverse("admin:curation_trainingrun_change", args=[run.pk])).content.decode()
    assert "Cancel the run" in page and "<polyline" in page
    staff_client.post(reverse("admin:curation_trainingrun_cancel", args=[run.pk]))
    assert TrainingRun.objects.get().cancel_requested


def test_it_refuses_a_run_without_enough_approved_photos(staff_client, active_model) -> None:
    response = staff_client.post(reverse("admin:curation_trainingrun_add"), {"config": "quick"})
    assert "Training needs at least 20 approved photos; there are 0." in response.content.decode()
    assert not TrainingRun.objects.exists()


def test_it_compares_activates_and_rolls_back_in_one_click(staff_client, staff, second_model, draw) -> None:
    first = second_model.__class__.objects.get(is_active=True)
    _add(draw, 1)
    dataset_image_approve(images=DatasetImage.objects.all(), user=None)
    changelist = staff_client.get(reverse("admin:reconstruct_modelversion_changelist")).content.decode()
    assert f'form="activate-{second_model.pk}"' in changelist
    compare = staff_client.get(reverse("admin:reconstruct_modelversion_compare"), {"a": second_model.pk})
    page = compare.content.decode()
    assert compare.context["comparison"]["count"] == 1
    assert page.count("data:image/png;base64,") == 3  # the photo and both reconstructions
    staff_client.post(reverse("admin:reconstruct_modelversion_activate", args=[second_model.pk]))
    second_model.refresh_from_db()
    assert second_model.is_active
    latest = ModelActivation.objects.first()
    assert (latest.version, latest.previous, latest.activated_by) == (second_model, first, staff)
    staff_client.post(reverse("admin:reconstruct_modelversion_rollback"))
    first.refresh_from_db()
    assert first.is_active
    audit = staff_client.get(reverse("admin:reconstruct_modelactivation_changelist")).content.decode()
    assert second_model.name in audit and "Rolled back" in audit
