from django.urls import path

from reconstruct import views

app_name = "reconstruct"

urlpatterns = [
    path("r/<uuid:public_id>/files/<str:kind>", views.reconstruction_file, name="file"),
]
