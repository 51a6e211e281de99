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
        # Never "this address has an account": that would let anyone test addresses. The address's owner is told
        # of the new account instead (reconstruct/services/accounts.py: account_signup_notify).
        return self.cleaned_data["email"].strip()


class UploadForm(forms.Form):
    image = forms.FileField(
        label="Photo of a car",
        error_messages={"required": "Please choose a photo of a car first."},
        allow_empty_file=True,  # upload_prepare says what is wrong with an empty file, as the API does
        widget=forms.ClearableFileInput(attrs={"accept": "image/*"}),
    )

    def clean_image(self) -> PreparedUpload:
        return upload_prepare(self.cleaned_data["image"])
