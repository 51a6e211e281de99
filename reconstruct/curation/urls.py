from django.urls import path

from reconstruct.curation import views

app_name = "curation"

urlpatterns = [
    path("r/<uuid:public_id>/offer/", views.reconstruction_donate, name="donate"),
]
