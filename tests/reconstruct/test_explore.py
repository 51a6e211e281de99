"""The latent space for people (reconstruct/explore/): morphs, new cars, sliders, sharing, the map, and their
JSON API. Every URL that names a result is tried by its owner and by someone else (404)."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest
from django.test import Client
from PIL import Image

from ml import latent
from reconstruct.explore import services
from reconstruct.models import ModelVersion, Reconstruction
from reconstruct.services.reconstructions import reconstruction_create
from reconstruct.services.tokens import api_token_regenerate
from tests.support import draw_car, encode, upload

NOT_YOURS = {"error": "No such reconstruction.", "code": "not_found"}

pytestmark = pytest.mark.django_db


@pytest.fixture
def cars(alice) -> tuple[Reconstruction, Reconstruction]:
    """Two of alice's finished reconstructions: a red car and a blue one."""
    red = reconstruction_create(user=alice, upload=upload(encode(draw_car(), "PNG"), "red.png"))
    blue = reconstruction_create(user=alice, upload=upload(encode(draw_car(body=(30, 60, 200)), "PNG"), "blue.png"))
    assert red.status == blue.status == "done"
    return red, blue


@pytest.fixture
def alice_client(client: Client, alice) -> Client:
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(bob) -> Client:
    other = Client()
    other.force_login(bob)
    return other


def picture(response: Any) -> Image.Image:
    return Image.open(io.BytesIO(b"".join(response.streaming_content) if response.streaming else response.content))


def auth(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Token {key}"}


# --- Latents ------------------------------------------------------------------------------------------------


def test_it_keeps_the_latent_mean_of_each_reconstruction(cars) -> None:
    red, _ = cars
    space = services.latent_space_active()
    assert len(red.latent) == space.model.config.latent_dim
    with red.original.open("rb") as handle:
        np.testing.assert_allclose(red.latent, space.model.encode(handle.read()), atol=1e-5)


def test_it_encodes_an_older_result_again_and_keeps_its_latent(cars) -> None:
    red, _ = cars
    kept = list(red.latent)
    Reconstruction.objects.filter(pk=red.pk).update(latent=None)
    red.refresh_from_db()
    z = services.reconstruction_latent(red, services.latent_space_active())
    np.testing.assert_allclose(z, kept, atol=1e-5)
    red.refresh_from_db()
    assert red.latent is not None


def test_it_encodes_again_what_the_model_saw_not_the_whole_photo(cars) -> None:
    # A result made by another model (or before latents were kept) is encoded again from its frame, mirrored
    # when its car faced right: the same view its reconstruction was made from.
    from django.core.files.storage import default_storage

    from ml import runtime
    from ml.framing import model_view

    red, _ = cars
    with default_storage.open(red.original.name, "rb") as handle:
        photo = runtime.open_source(io.BytesIO(handle.read()))
    frame = [photo.width // 4, 0, photo.width, photo.height * 3 // 4]
    Reconstruction.objects.filter(pk=red.pk).update(latent=None, frame=frame, mirrored=True)
    red.refresh_from_db()
    space = services.latent_space_active()
    z = services.reconstruction_latent(red, space)
    seen = photo.crop((frame[0], frame[1], frame[2], frame[3])).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    np.testing.assert_allclose(z, space.model.encode(seen), atol=1e-5)
    np.testing.assert_allclose(z, space.model.encode(model_view(photo, frame, mirrored=True)), atol=1e-5)
    assert np.abs(z - space.model.encode(photo)).max() > 1e-3


def test_it_reads_the_latent_space_of_a_shipped_model_registered_before_it_had_one(alice_client, cars) -> None:
    red, _ = cars
    model = services.latent_space_active().model
    kept = model.metadata
    # What a database that registered the shipped model before this change holds in storage.
    model.metadata = {k: v for k, v in kept.items() if k not in (latent.PCA_KEY, latent.MAP_KEY)}
    try:
        space = services.latent_space_active()
        assert space.pca == kept[latent.PCA_KEY] and space.projection == kept[latent.MAP_KEY]
        assert alice_client.get(f"/r/{red.uuid}/").content.decode().count('type="range"') == services.SLIDERS
        ModelVersion.objects.filter(pk=space.version.pk).update(source="trained")  # not the shipped files
        assert services.latent_space_active().pca is None
        assert "without principal directions" in alice_client.get(f"/r/{red.uuid}/").content.decode()
    finally:
        model.metadata = kept


def test_it_encodes_an_upload_of_another_model_again_without_touching_its_row(cars) -> None:
    red, _ = cars
    other = ModelVersion.objects.create(name="older-model", source="trained", files={}, metadata={})
    Reconstruction.objects.filter(pk=red.pk).update(model_version=other, latent=[0.0] * 128)
    red.refresh_from_db()
    space = services.latent_space_active()
    assert services.reconstruction_latent_needs_encoding(red, space)
    with red.original.open("rb") as handle:
        expected = space.model.encode(handle.read())
    np.testing.assert_allclose(services.reconstruction_latent(red, space), expected, atol=1e-5)
    red.refresh_from_db()
    assert red.latent == [0.0] * 128  # the row's latent belongs to its own model
    assert not services.reconstruction_latent_needs_encoding(red, space)  # kept in the process


def test_it_places_older_cars_a_few_at_a_time_within_its_encoding_budget(alice, cars) -> None:
    Reconstruction.objects.filter(owner=alice).update(latent=None)
    first = services.reconstruction_map(alice, encode_budget_s=0.0)
    assert len(first.points) == 1 and "reload the page" in first.left_out[0]
    second = services.reconstruction_map(alice, encode_budget_s=0.0)
    assert len(second.points) == 2 and second.left_out == []


def test_it_explains_when_a_decoded_car_of_another_model_has_no_latent(alice_client, alice) -> None:
    kept = services.sample_keep(user=alice, seed=3, temperature=1.0, index=0)
    other = ModelVersion.objects.create(name="older-model", source="trained", files={}, metadata={})
    Reconstruction.objects.filter(pk=kept.pk).update(model_version=other)
    response = alice_client.get(f"/api/reconstructions/{kept.uuid}/latent/")
    assert response.status_code == 409 and response.json()["code"] == "latent_unavailable"
    assert "earlier model" in response.json()["error"]
    page = alice_client.get(f"/r/{kept.uuid}/")
    assert page.status_code == 200 and "earlier model" in page.content.decode()


# --- Morph --------------------------------------------------------------------------------------------------


def test_it_morphs_two_cars_into_a_strip_and_an_animation(alice_client, cars) -> None:
    red, blue = cars
    page = alice_client.get(f"/morph/{red.uuid}/{blue.uuid}/?steps=6&method=slerp")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"http://testserver/morph/{red.uuid}/{blue.uuid}/?steps=6&amp;method=slerp" in html  # the permalink
    strip = picture(alice_client.get(f"/morph/{red.uuid}/{blue.uuid}/strip.png?steps=6"))
    assert strip.size == (6 * 128, 64)
    webp = alice_client.get(f"/morph/{red.uuid}/{blue.uuid}/morph.webp?steps=6&download=1")
    assert webp["Content-Type"] == "image/webp" and "attachment" in webp["Content-Disposition"]
    animation = picture(webp)
    assert animation.is_animated and animation.n_frames == 2 * 6 - 2  # there and back
    gif = picture(alice_client.get(f"/morph/{red.uuid}/{blue.uuid}/morph.gif?steps=4"))
    assert gif.format == "GIF" and gif.n_frames == 6


def test_it_walks_from_one_reconstruction_to_the_other(cars) -> None:
    red, blue = cars
    frames = services.morph_frames(red, blue, 5, "slerp")
    space = services.latent_space_active()
    first, last = (np.asarray(f, np.float32) for f in (frames[0], frames[-1]))
    np.testing.assert_array_equal(first, np.asarray(space.model.decode(red.latent), np.float32))
    np.testing.assert_array_equal(last, np.asarray(space.model.decode(blue.latent), np.float32))
    # Redder at the start than at the end: the body colour travels.
    red_share = [np.asarray(f, np.float32)[..., 0].mean() - np.asarray(f, np.float32)[..., 2].mean() for f in frames]
    assert red_share[0] > red_share[2] > red_share[-1]


def test_it_shows_the_same_morph_at_its_permalink(alice_client, cars) -> None:
    red, blue = cars
    url = f"/morph/{red.uuid}/{blue.uuid}/strip.png?steps=5&method=lerp"
    assert alice_client.get(url).content == alice_client.get(url).content


def test_it_refuses_bad_morph_options(alice_client, cars) -> None:
    red, blue = cars
    assert alice_client.get(f"/morph/{red.uuid}/{blue.uuid}/strip.png?steps=99").status_code == 400
    response = alice_client.get(f"/api/morph/{red.uuid}/{blue.uuid}/?method=cubic")
    assert response.status_code == 400 and response.json()["code"] == "bad_method"


def test_it_goes_from_two_ticked_cars_to_their_morph(alice_client, cars) -> None:
    red, blue = cars
    response = alice_client.get(f"/morph/?pick={red.uuid}&pick={blue.uuid}")
    assert response.status_code == 302 and response["Location"] == f"/morph/{red.uuid}/{blue.uuid}/"
    page = alice_client.get(f"/morph/?from={red.uuid}")
    assert page.status_code == 200 and f'value="{red.uuid}" checked' in page.content.decode()


# --- New cars -----------------------------------------------------------------------------------------------


def test_it_puts_a_seed_in_the_address_and_shows_the_same_cars_for_it(alice_client) -> None:
    response = alice_client.get("/new-cars/")
    assert response.status_code == 302
    assert re.fullmatch(r"/new-cars/\?seed=\d+&temperature=1\.0", response["Location"])
    page = alice_client.get("/new-cars/?seed=42&temperature=0.7")
    assert page.content.decode().count("/new-cars/42/") == services.SAMPLE_COUNT
    first = alice_client.get("/new-cars/42/3.png?temperature=0.7").content
    assert first == alice_client.get("/new-cars/42/3.png?temperature=0.7").content
    assert first != alice_client.get("/new-cars/43/3.png?temperature=0.7").content
    assert first != alice_client.get("/new-cars/42/4.png?temperature=0.7").content


def test_it_draws_the_average_car_at_temperature_zero(alice_client) -> None:
    calm = alice_client.get("/new-cars/5/0.png?temperature=0").content
    assert calm == alice_client.get("/new-cars/6/1.png?temperature=0").content
    assert alice_client.get("/new-cars/5/0.png?temperature=9").status_code == 400


def test_it_keeps_a_new_car_in_the_gallery_marked_as_sampled(alice_client, alice) -> None:
    response = alice_client.post("/new-cars/keep/", {"seed": "42", "temperature": "0.7", "index": "3"})
    kept = Reconstruction.objects.get(owner=alice)
    assert response.status_code == 302 and response["Location"] == f"/r/{kept.uuid}/"
    assert kept.origin == "sampled" and kept.status == "done"
    assert kept.origin_detail == {"seed": 42, "temperature": 0.7, "index": 3}
    np.testing.assert_allclose(kept.latent, latent.prior_sample(42, 1, 128, 0.7, start=3)[0], atol=1e-6)
    stored = picture(alice_client.get(f"/r/{kept.uuid}/files/reconstruction"))
    shown = picture(alice_client.get("/new-cars/42/3.png?temperature=0.7"))
    np.testing.assert_array_equal(np.asarray(stored), np.asarray(shown))
    assert "Sampled" in alice_client.get("/gallery/").content.decode()
    detail = alice_client.get(f"/r/{kept.uuid}/").content.decode()
    assert "Sampled from the prior" in detail and "seed 42" in detail and "Closeness" not in detail


def test_a_refused_keep_goes_back_to_a_page_of_this_site_only(alice_client, settings) -> None:
    """A kept car counts against the hourly limit like an upload (it was only checked, never counted, so keeps
    were unlimited); over the limit, keeping goes back to the page it came from (Referer), but never to another
    site's (an attack review found a redirect to whatever the Referer said)."""
    settings.RECONSTRUCT_UPLOADS_PER_HOUR = 1
    assert alice_client.post("/new-cars/keep/", {"seed": "42", "temperature": "0.7", "index": "2"}).status_code == 302
    keep = {"seed": "42", "temperature": "0.7", "index": "3"}  # over the limit: refused
    back = alice_client.post("/new-cars/keep/", keep, HTTP_REFERER="http://testserver/new-cars/?seed=7")
    assert back.status_code == 302 and back["Location"] == "http://testserver/new-cars/?seed=7"
    for elsewhere in ("https://evil.example/phish", "//evil.example/", "javascript:alert(1)"):
        away = alice_client.post("/new-cars/keep/", keep, HTTP_REFERER=elsewhere)
        assert away.status_code == 302 and away["Location"] == "/new-cars/", elsewhere


# --- Sliders ------------------------------------------------------------------------------------------------


def test_it_shows_sliders_with_the_share_of_variance_on_a_result_page(alice_client, cars) -> None:
    red, _ = cars
    html = alice_client.get(f"/r/{red.uuid}/").content.decode()
    ratios = services.latent_space_active().pca["explained_variance_ratio"]
    assert html.count('type="range"') == services.SLIDERS
    assert f'Direction 1 <small class="muted">({ratios[0]:.1%})' in html
    assert f'data-edit-url="/r/{red.uuid}/edit.png"' in html and "js/sliders.js" in html
    assert "<script>" not in html  # no inline script: the CSP allows none


def test_it_decodes_a_slider_move_into_the_whole_frame(alice_client, alice, cars) -> None:
    red, _ = cars
    still = picture(alice_client.get(f"/r/{red.uuid}/edit.png?offsets="))
    stored = picture(alice_client.get(f"/r/{red.uuid}/files/reconstruction"))
    assert still.size == stored.size == (128, 64)  # a 2:1 photo fills the frame: the very same pixels
    np.testing.assert_array_equal(np.asarray(still), np.asarray(stored))
    moved = picture(alice_client.get(f"/r/{red.uuid}/edit.png?offsets=3,0,-2"))
    assert moved.size == (128, 64)
    assert np.abs(np.asarray(moved, np.float32) - np.asarray(stored, np.float32)).mean() > 1.0
    for bad in ("9", "a,b", ",".join(["0"] * 9), "nan"):
        assert alice_client.get(f"/r/{red.uuid}/edit.png?offsets={bad}").status_code == 400
    # A 4:1 photo sits in a band of the frame: the stored reconstruction is that band of the same decoding.
    wide = reconstruction_create(user=alice, upload=upload(encode(draw_car((480, 120)), "PNG"), "wide.png"))
    whole = np.asarray(picture(alice_client.get(f"/r/{wide.uuid}/edit.png?offsets=")))
    band = np.asarray(picture(alice_client.get(f"/r/{wide.uuid}/files/reconstruction")))
    assert whole.shape == (64, 128, 3) and band.shape == (32, 128, 3)
    np.testing.assert_array_equal(whole[16:48], band)


def test_it_saves_a_slider_result_to_the_gallery(alice_client, alice, cars) -> None:
    red, _ = cars
    response = alice_client.post(f"/r/{red.uuid}/edit/", {"offsets": "1.5,0,-1"})
    edited = Reconstruction.objects.get(owner=alice, origin="edited")
    assert response["Location"] == f"/r/{edited.uuid}/"
    assert edited.origin_detail == {"source": str(red.uuid), "offsets": [1.5, 0.0, -1.0]}
    space = services.latent_space_active()
    coordinates = latent.pca_coordinates(edited.latent, space.pca, 3) - latent.pca_coordinates(red.latent, space.pca, 3)
    np.testing.assert_allclose(coordinates, [1.5, 0.0, -1.0], atol=1e-3)
    stored = picture(alice_client.get(f"/r/{edited.uuid}/files/reconstruction"))
    shown = picture(alice_client.get(f"/r/{red.uuid}/edit.png?offsets=1.5,0,-1"))
    np.testing.assert_array_equal(np.asarray(stored), np.asarray(shown))


def test_its_sliders_show_a_mirrored_car_facing_the_way_its_result_does(alice_client, alice, cars) -> None:
    """A car that faced right was mirrored for the model (its latent faces left): the slider pictures and a
    saved slider result are mirrored back, like its reconstruction."""
    red, _ = cars
    facing_left = np.asarray(picture(alice_client.get(f"/r/{red.uuid}/edit.png?offsets=1,0")))
    Reconstruction.objects.filter(pk=red.pk).update(mirrored=True)
    shown = np.asarray(picture(alice_client.get(f"/r/{red.uuid}/edit.png?offsets=1,0")))
    np.testing.assert_array_equal(shown, facing_left[:, ::-1])
    alice_client.post(f"/r/{red.uuid}/edit/", {"offsets": "1,0"})
    edited = Reconstruction.objects.get(owner=alice, origin="edited")
    assert edited.mirrored
    stored = np.asarray(picture(alice_client.get(f"/r/{edited.uuid}/files/reconstruction")))
    np.testing.assert_array_equal(stored, shown)
    again = np.asarray(picture(alice_client.get(f"/r/{edited.uuid}/edit.png?offsets=")))
    assert again.shape == shown.shape


# --- Sharing --------------------------------------------------------------------------------------------------


def test_it_shares_a_result_without_the_owner_and_unshares_it(alice_client, alice, cars) -> None:
    red, blue = cars
    alice_client.post(f"/r/{red.uuid}/share/", {"action": "share"})
    red.refresh_from_db()
    token = red.share_token
    assert token and len(token) >= 40
    stranger = Client()
    page = stranger.get(f"/s/{token}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "alice" not in html and "red.png" not in html and str(blue.uuid) not in html and str(red.uuid) not in html
    assert '<meta property="og:title"' in html
    assert f'<meta property="og:image" content="http://testserver/s/{token}/thumbnail">' in html
    assert "Closeness (PSNR)" in html
    for kind in ("original", "model_input", "reconstruction", "thumbnail"):
        response = stranger.get(f"/s/{token}/{kind}")
        assert response.status_code == 200 and "Location" not in response  # streamed, never a presigned URL
    assert stranger.get(f"/s/{token}/latent").status_code == 404
    # Link-preview bots may ask with HEAD first.
    assert stranger.head(f"/s/{token}/").status_code == stranger.head(f"/s/{token}/thumbnail").status_code == 200

    alice_client.post(f"/r/{red.uuid}/share/", {"action": "unshare"})
    assert stranger.get(f"/s/{token}/").status_code == 404
    assert stranger.get(f"/s/{token}/reconstruction").status_code == 404
    alice_client.post(f"/r/{red.uuid}/share/", {"action": "share"})
    red.refresh_from_db()
    assert red.share_token != token  # a new link: the old one stays dead


def test_it_streams_public_pictures_from_s3_only_while_shared(alice_client, alice, on_s3) -> None:
    red = reconstruction_create(user=alice, upload=upload(encode(draw_car(), "PNG"), "red.png"))
    token = services.reconstruction_share(red)
    stranger = Client()
    response = stranger.get(f"/s/{token}/reconstruction")
    # Through the site, not a redirect to a presigned URL that would keep working after unsharing.
    assert response.status_code == 200 and "Location" not in response
    assert picture(response).size == picture(alice_client.get(f"/r/{red.uuid}/edit.png")).size
    services.reconstruction_unshare(red)
    assert stranger.get(f"/s/{token}/reconstruction").status_code == 404


def test_it_shows_the_public_link_to_its_owner(alice_client, cars) -> None:
    red, _ = cars
    html = alice_client.get(f"/r/{red.uuid}/").content.decode()
    assert "Only you can see this result." in html
    token = services.reconstruction_share(red)
    html = alice_client.get(f"/r/{red.uuid}/").content.decode()
    assert f"http://testserver/s/{token}/" in html and "Make private again" in html


# --- The map ----------------------------------------------------------------------------------------------------


def test_it_places_the_users_cars_on_the_map(alice_client, cars, bob) -> None:
    red, blue = cars
    reconstruction_create(user=bob, upload=upload(encode(draw_car(), "PNG"), "bobs.png"))
    html = alice_client.get("/map/").content.decode()
    assert html.count('class="map-point"') == 2 and "js/map.js" in html
    data = alice_client.get("/api/map/").json()
    assert {p["id"] for p in data["points"]} == {str(red.uuid), str(blue.uuid)}
    space = services.latent_space_active()
    x, y = latent.map_position(red.latent, space.projection)
    point = next(p for p in data["points"] if p["id"] == str(red.uuid))
    assert point["x"] == pytest.approx(min(max(x, 0), 1), abs=1e-4)
    assert point["y"] == pytest.approx(min(max(y, 0), 1), abs=1e-4)


# --- Two users: every URL that names a result -------------------------------------------------------------------


def test_it_answers_404_to_bob_for_every_url_naming_alices_cars(bob_client, cars, bob) -> None:
    red, blue = cars
    for url in (
        f"/morph/{red.uuid}/{blue.uuid}/",
        f"/morph/{red.uuid}/{blue.uuid}/strip.png",
        f"/morph/{red.uuid}/{blue.uuid}/morph.webp",
        f"/morph/{red.uuid}/{blue.uuid}/morph.gif",
        f"/r/{red.uuid}/edit.png?offsets=1",
        f"/api/reconstructions/{red.uuid}/latent/",
        f"/api/morph/{red.uuid}/{blue.uuid}/",
    ):
        assert bob_client.get(url).status_code == 404, url
    for url in (f"/r/{red.uuid}/edit/", f"/r/{red.uuid}/share/"):
        assert bob_client.post(url, {"offsets": "1", "action": "share"}).status_code == 404, url
    key = api_token_regenerate(bob)
    for url in (f"/api/reconstructions/{red.uuid}/edit/", f"/api/reconstructions/{red.uuid}/share/"):
        response = bob_client.post(url, "{}", content_type="application/json", **auth(key))
        assert (response.status_code, response.json()) == (404, NOT_YOURS), url
    mine = reconstruction_create(user=bob, upload=upload(encode(draw_car(), "PNG"), "bobs.png"))
    assert bob_client.get(f"/morph/{mine.uuid}/{red.uuid}/").status_code == 404  # one of each is not enough
    assert bob_client.get(f"/morph/?pick={mine.uuid}&pick={red.uuid}").status_code == 302  # only a redirect...
    assert bob_client.get(f"/morph/{mine.uuid}/{red.uuid}/", follow=True).status_code == 404  # ...to a 404
    red.refresh_from_db()
    assert red.share_token is None and not Reconstruction.objects.filter(owner=bob, origin="edited").exists()


# --- The JSON API ---------------------------------------------------------------------------------------------


def test_its_api_needs_authentication(client, cars) -> None:
    red, blue = cars
    for url in ("/api/latent-space/", "/api/samples/?seed=1", "/api/map/", f"/api/morph/{red.uuid}/{blue.uuid}/"):
        response = client.get(url)
        assert response.status_code == 401 and "Authentication required" in response.json()["error"], url
    assert client.post("/api/decode/", "{}", content_type="application/json").status_code == 401


def test_its_api_morphs_samples_decodes_and_moves(client, alice, cars) -> None:
    red, blue = cars
    headers = auth(api_token_regenerate(alice))
    space = client.get("/api/latent-space/", **headers).json()
    assert space["latent_dim"] == 128 and space["sliders"] == services.SLIDERS
    assert space["directions"][0]["explained_variance_ratio"] > space["directions"][1]["explained_variance_ratio"]

    morph = client.get(f"/api/morph/{red.uuid}/{blue.uuid}/?steps=4&method=lerp", **headers).json()
    assert len(morph["latents"]) == 4 and morph["method"] == "lerp"
    np.testing.assert_allclose(morph["latents"][0], red.latent, atol=1e-6)
    assert morph["url"] == f"http://testserver/morph/{red.uuid}/{blue.uuid}/?steps=4&method=lerp"
    assert client.get(morph["webp"], **headers)["Content-Type"] == "image/webp"

    samples = client.get("/api/samples/?seed=42&temperature=0.7&count=3", **headers).json()
    assert samples == client.get("/api/samples/?seed=42&temperature=0.7&count=3", **headers).json()
    assert [s["index"] for s in samples["samples"]] == [0, 1, 2]
    np.testing.assert_allclose(samples["samples"][2]["latent"], latent.prior_sample(42, 3, 128, 0.7)[2], atol=1e-6)
    bad = client.get("/api/samples/?seed=-1", **headers)
    assert bad.status_code == 400 and bad.json()["code"] == "bad_seed"

    decoded = client.post(
        "/api/decode/", {"latent": samples["samples"][2]["latent"]}, content_type="application/json", **headers
    )
    assert decoded["Content-Type"] == "image/png"
    assert decoded.content == client.get(samples["samples"][2]["image"], **headers).content
    short = client.post("/api/decode/", {"latent": [1, 2]}, content_type="application/json", **headers)
    assert short.status_code == 400 and short.json()["code"] == "bad_latent"

    moved = client.post(
        f"/api/reconstructions/{red.uuid}/edit/", {"offsets": [2, 0, -1]}, content_type="application/json", **headers
    )
    assert moved["Content-Type"] == "image/png"
    assert moved.content == client.get(f"/r/{red.uuid}/edit.png?offsets=2,0,-1", **headers).content
    saved = client.post(
        f"/api/reconstructions/{red.uuid}/edit/",
        {"offsets": [2, 0, -1], "save": True},
        content_type="application/json",
        **headers,
    )
    assert saved.status_code == 201 and saved.json()["origin"] == "edited"

    kept = client.post("/api/samples/", {"seed": 42, "index": 2}, content_type="application/json", **headers)
    assert kept.status_code == 201 and kept.json()["origin"] == "sampled" and kept.json()["scores"] is None
    position = client.get(f"/api/reconstructions/{red.uuid}/latent/", **headers).json()
    space = services.latent_space_active()
    np.testing.assert_allclose(
        position["coordinates"], latent.pca_coordinates(red.latent, space.pca, services.SLIDERS), atol=1e-3
    )
    x, y = latent.map_position(red.latent, space.projection)
    assert position["map"] == {"x": pytest.approx(x), "y": pytest.approx(y)}


def test_its_api_shares_and_unshares(client, alice, cars) -> None:
    red, _ = cars
    headers = auth(api_token_regenerate(alice))
    url = f"/api/reconstructions/{red.uuid}/share/"
    public_url = client.post(url, **headers).json()["public_url"]
    assert client.post(url, **headers).json()["public_url"] == public_url  # the same link while public
    assert Client().get(public_url).status_code == 200
    assert client.delete(url, **headers).status_code == 204
    assert Client().get(public_url).status_code == 404


def test_its_api_checks_csrf_for_a_session(alice, cars) -> None:
    red, _ = cars
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    response = browser.post(f"/api/reconstructions/{red.uuid}/share/")
    assert response.status_code == 403 and "CSRF" in response.json()["error"]
