// The result page while the job runs: poll the JSON status endpoint and show the result as soon as
// it is there (the page reloads itself once; no manual reload).
(function () {
  "use strict";
  const box = document.getElementById("progress");
  if (!box) return;
  const title = document.getElementById("progress-title");
  const detail = document.getElementById("progress-detail");
  const warning = document.getElementById("progress-warning");
  const fill = document.getElementById("bar-fill");
  const created = Date.parse(box.dataset.created);
  let delay = 700;
  let failures = 0;

  function render(status) {
    const seconds = Math.max(0, Math.round((Date.now() - created) / 1000));
    fill.className = "bar-fill " + status;
    if (status === "running") {
      title.textContent = "Reconstructing…";
      detail.textContent = "A worker is running the model on your photo (" + seconds + " s so far).";
    } else {
      title.textContent = "Waiting for a worker…";
      detail.textContent = "Queued " + seconds + " s ago. This page updates by itself.";
      if (seconds > 30) {
        warning.textContent = "No worker has picked this up yet. If this stays, the site's Celery worker " +
          "may not be running (`make run` starts one).";
        warning.hidden = false;
      }
    }
  }

  async function poll() {
    try {
      const response = await fetch(box.dataset.statusUrl, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.status === 404 || response.status === 401) { window.location.reload(); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      failures = 0;
      warning.hidden = true;
      if (data.status === "done" || data.status === "failed") { window.location.reload(); return; }
      render(data.status);
    } catch (error) {
      failures += 1;
      if (failures >= 3) {
        warning.textContent = "Cannot reach the site right now (" + error.message + "); still trying…";
        warning.hidden = false;
      }
    }
    delay = Math.min(delay * 1.3, 3000);
    window.setTimeout(poll, delay);
  }
  window.setTimeout(poll, delay);
})();
