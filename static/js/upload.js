// The upload page: drag and drop onto the drop zone, a preview, a size check before sending,
// and a busy button while the photo uploads.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = document.getElementById("id_image");
  const camera = document.getElementById("id_camera");
  const zone = document.getElementById("dropzone");
  const preview = document.getElementById("preview");
  const text = document.getElementById("dropzone-text");
  const problem = document.getElementById("client-error");
  const submit = document.getElementById("submit");
  // Without direct uploads to S3, a photo must also fit in one request (4 MB on AWS Lambda).
  const maxBytes = form.dataset.directUrl ? Number(form.dataset.maxBytes)
    : Math.min(Number(form.dataset.maxBytes), Number(form.dataset.inlineMaxBytes || form.dataset.maxBytes));
  const inlineMaxBytes = Number(form.dataset.inlineMaxBytes || form.dataset.maxBytes);

  function megabytes(bytes) { return (bytes / 1024 / 1024).toFixed(1) + " MB"; }

  function show(file) {
    problem.hidden = true;
    if (!file) return;
    if (file.size > maxBytes) {
      problem.textContent = "This file is " + megabytes(file.size) + "; the limit is " + megabytes(maxBytes) +
        ". Please choose a smaller photo.";
      problem.hidden = false;
    }
    if (file.type && !file.type.startsWith("image/")) {
      problem.textContent = "This does not look like a photo (" + file.type + "). Please choose an image file.";
      problem.hidden = false;
    }
    text.innerHTML = "";
    const name = document.createElement("strong");
    name.textContent = file.name;
    text.append(name, document.createTextNode(" · " + megabytes(file.size) + " · click to choose another"));
    if (file.type && file.type.startsWith("image/")) {
      preview.src = URL.createObjectURL(file);
      preview.hidden = false;
    }
  }

  input.addEventListener("change", () => show(input.files[0]));
  if (camera) {
    camera.addEventListener("change", () => {
      if (camera.files.length) { input.files = camera.files; show(input.files[0]); }
    });
  }
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, () => zone.classList.remove("dragover")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      show(input.files[0]);
    }
  });
  form.addEventListener("submit", (event) => {
    const file = input.files[0];
    if (file && file.size > maxBytes) { event.preventDefault(); return; }
    submit.disabled = true;
    submit.textContent = "Uploading and reconstructing…";
    if (file && file.size > inlineMaxBytes && form.dataset.directUrl && window.carsiteDirectUpload) {
      // Too big for one request through this server (AWS Lambda): straight to storage instead.
      event.preventDefault();
      window.carsiteDirectUpload(form, file)
        .then((url) => { window.location.assign(url); })
        .catch((error) => {
          problem.textContent = error.message;
          problem.hidden = false;
          submit.disabled = false;
          submit.textContent = "Reconstruct";
        });
    }
  });
  // Coming back with the browser's back button must not leave the button stuck.
  window.addEventListener("pageshow", () => { submit.disabled = false; submit.textContent = "Reconstruct"; });
})();
