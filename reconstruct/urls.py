"""URLs of the site's pages and of its JSON API (the API's are included by carsite/urls.py under /api/)."""

from django.urls import path, re_path

from reconstruct import api, views

app_name = "reconstruct"

urlpatterns = [
    path("reconstruct/", views.upload, name="upload"),
    path("gallery/", views.gallery, name="gallery"),
    path("r/<uuid:public_id>/", views.detail, name="detail"),
    path("r/<uuid:public_id>/delete/", views.delete, name="delete"),
    path("r/<uuid:public_id>/retry/", views.retry, name="retry"),
    path("r/<uuid:public_id>/files/<str:kind>", views.reconstruction_file, name="file"),
]

# Included under /api/uploads/ with the namespace "direct_uploads".
direct_upload_urlpatterns = (
    [
        path("", api.upload_presign, name="presign"),
        path("<uuid:upload_id>/complete/", api.upload_complete, name="complete"),
    ],
    "direct_uploads",
)

# Included under /api/ with the namespace "api".
api_urlpatterns = (
    [
        path("reconstructions/", api.reconstructions, name="reconstructions"),
        path("reconstructions/<uuid:public_id>/", api.reconstruction, name="reconstruction"),
        path("reconstructions/<uuid:public_id>/retry/", api.retry, name="retry"),
        re_path(r"^(?P<path>.*)$", api.not_found),
    ],
    "api",
)
