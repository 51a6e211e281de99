from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

from reconstruct import views
from reconstruct.explore.urls import api_urlpatterns as explore_api_urlpatterns
from reconstruct.urls import api_urlpatterns, direct_upload_urlpatterns

urlpatterns = [
    path("", views.home, name="home"),
    # Crawlers (and Lighthouse) ask for it first; without it every visit logs a 404 warning.
    path("robots.txt", TemplateView.as_view(template_name="robots.txt", content_type="text/plain"), name="robots"),
    path("examples/<int:index>/<str:kind>.png", views.example_image, name="example_image"),
    path("accounts/signup/", views.signup, name="signup"),
    # Before Django's own: throttled reset views (reconstruct/throttle.py); a link that does not work says why.
    path("accounts/password_reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path("accounts/reset/<uidb64>/<token>/", views.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("accounts/logout/", views.LogoutView.as_view(), name="logout"),  # a GET asks (Django's: a blank 405)
    path("accounts/", include("django.contrib.auth.urls")),
    path("account/", views.account, name="account"),
    # Before "api/": its catch-all answers every other path under /api/ with a JSON 404.
    path("api/uploads/", include(direct_upload_urlpatterns)),
    path("api/", include(explore_api_urlpatterns)),
    path("api/", include(api_urlpatterns)),
    path("admin/", admin.site.urls),
    path("", include("reconstruct.urls")),
    path("", include("reconstruct.curation.urls")),
    path("", include("reconstruct.explore.urls")),
]

handler400 = "reconstruct.views.bad_request"
handler404 = "reconstruct.views.page_not_found"
handler500 = "reconstruct.views.server_error"
