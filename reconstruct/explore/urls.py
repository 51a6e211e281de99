"""URLs of the latent-space pages and of their JSON API (included by carsite/urls.py)."""

from django.urls import path

from reconstruct.explore import api, views

app_name = "explore"

urlpatterns = [
    path("morph/", views.morph_pick, name="morph_pick"),
    path("morph/<uuid:first>/<uuid:second>/", views.morph, name="morph"),
    path("morph/<uuid:first>/<uuid:second>/<str:name>", views.morph_file, name="morph_file"),
    path("new-cars/", views.new_cars, name="new_cars"),
    path("new-cars/keep/", views.new_car_keep, name="new_car_keep"),
    path("new-cars/<int:seed>/<int:index>.png", views.new_car_image, name="new_car_image"),
    path("r/<uuid:public_id>/edit.png", views.edit_image, name="edit_image"),
    path("r/<uuid:public_id>/edit/", views.edit_save, name="edit_save"),
    path("r/<uuid:public_id>/share/", views.share, name="share"),
    path("s/<str:token>/", views.public_detail, name="public"),
    path("s/<str:token>/<str:kind>", views.public_file, name="public_file"),
    path("map/", views.car_map, name="map"),
]

# Included under /api/ with the namespace "explore_api", before the API's catch-all 404.
api_urlpatterns = (
    [
        path("latent-space/", api.latent_space, name="latent_space"),
        path("reconstructions/<uuid:public_id>/latent/", api.reconstruction_latent, name="latent"),
        path("reconstructions/<uuid:public_id>/edit/", api.reconstruction_edit, name="edit"),
        path("reconstructions/<uuid:public_id>/share/", api.reconstruction_share, name="share"),
        path("morph/<uuid:first>/<uuid:second>/", api.morph, name="morph"),
        path("samples/", api.samples, name="samples"),
        path("decode/", api.decode, name="decode"),
        path("map/", api.car_map, name="map"),
    ],
    "explore_api",
)
