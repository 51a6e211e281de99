"""Forms: sign-up and the photo upload (the real validation is reconstruct/services/uploads.py: upload_prepare)."""

from __future__ import annotations

from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User

from reconstruct.services.uploads import PreparedUpload, upload_prepare


class SignupForm(UserCreationForm):
    email = forms.EmailField(
        required=True, help_text="Only used to reset your password if you forget it.", label="Email address"
    )

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this email address exists already. Log in instead?")
        return email


class UploadForm(forms.Form):
    image = forms.FileField(
        label="Photo of a car",
        error_messages={"required": "Please choose a photo of a car first."},
        allow_empty_file=True,  # upload_prepare says what is wrong with an empty file, as the API does
        widget=forms.ClearableFileInput(attrs={"accept": "image/*"}),
    )

    def clean_image(self) -> PreparedUpload:
        return upload_prepare(self.cleaned_data["image"])
