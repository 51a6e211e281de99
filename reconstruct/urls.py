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

# Included under /api/ with the namespace "api".
api_urlpatterns = (
    [
        path("reconstructions/", api.reconstructions, name="reconstructions"),
        path("reconstructions/<uuid:public_id>/", api.reconstruction, name="reconstruction"),
        re_path(r"^(?P<path>.*)$", api.not_found),
    ],
    "api",
)
