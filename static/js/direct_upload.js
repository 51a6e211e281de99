// Photos too large for one request through AWS Lambda (6 MB, base64 included) go straight to S3: ask the site for
// a presigned POST, send the photo to S3 with it, then ask the site to reconstruct it from there
// (reconstruct/services/direct_uploads.py). Resolves with the result page's URL; rejects with a message a person can read.
(function () {
  "use strict";

  async function json(response) {
    try { return await response.json(); } catch (error) { return {}; }
  }

  window.carsiteDirectUpload = async function (form, file) {
    const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
    const headers = { "X-CSRFToken": csrf, "Accept": "application/json" };

    const presign = await fetch(form.dataset.directUrl, { method: "POST", headers, credentials: "same-origin" });
    const ticket = await json(presign);
    if (!presign.ok) throw new Error(ticket.error || "The upload could not start (" + presign.status + ").");

    const body = new FormData();
    Object.entries(ticket.fields).forEach(([name, value]) => body.append(name, value));
    body.append("file", file); // S3 wants the file as the last field
    let stored;
    try {
      stored = await fetch(ticket.url, { method: "POST", body });
    } catch (error) {
      throw new Error("The photo could not be sent to storage (" + error.message + "). Please try again.");
    }
    if (!stored.ok) throw new Error("Storage refused the photo (" + stored.status + "). Please try again.");

    const done = await fetch(ticket.complete_url, {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" }, headers),
      body: JSON.stringify({ name: file.name }),
      credentials: "same-origin",
    });
    const result = await json(done);
    if (!done.ok) throw new Error(result.error || "The photo could not be processed (" + done.status + ").");
    return result.url;
  };
})();
