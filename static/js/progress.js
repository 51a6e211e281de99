// The result page while the job runs: ask the JSON status endpoint with ?wait= (a long-poll that
// answers the moment the job finishes) and show the result at once (the page reloads itself once; no
// manual reload). After a failed request it falls back to polling, more slowly each time.
(function () {
  "use strict";
  const box = document.getElementById("progress");
  if (!box) return;
  const title = document.getElementById("progress-title");
  const detail = document.getElementById("progress-detail");
  const warning = document.getElementById("progress-warning");
  const fill = document.getElementById("bar-fill");
  const created = Date.parse(box.dataset.created);
  const WAIT_SECONDS = 25;  // the server's limit for ?wait=
  let delay = 700;
  let failures = 0;

  // The last status shown (at first the page's own), redrawn every second so that its "N s" counts on.
  let shown = [box.dataset.status, box.dataset.queued || null];

  function render(status, queuedAt) {
    shown = [status, queuedAt];
    if (box.dataset.stuck) return;  // the page says so, and offers "Queue it again"
    const seconds = Math.max(0, Math.round((Date.now() - created) / 1000));
    fill.className = "bar-fill " + status;
    if (status === "running") {
      title.textContent = "Reconstructing…";
      detail.textContent = "A worker is running the model on your photo (" + seconds + " s so far).";
    } else if (!queuedAt && box.dataset.mode === "celery") {
      // The queue (Redis) did not take the job at upload: the sweep queues it once it answers.
      title.textContent = "Not in the queue yet…";
      detail.textContent = "The job queue did not answer when you uploaded (" + seconds + " s ago). Your photo " +
        "is kept, and it is queued by itself once the queue answers again (the site checks every minute).";
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
    const url = box.dataset.statusUrl + (failures === 0 ? "?wait=" + WAIT_SECONDS : "");
    const asked = Date.now();
    try {
      const response = await fetch(url, {
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
      // Stuck (its worker died): the page, loaded again, says so and offers "Queue it again".
      if (data.stuck && !box.dataset.stuck) { window.location.reload(); return; }
      render(data.status, data.queued_at);
      // A long-poll that waited asks again at once; a server that answered at once (no waiting there)
      // is polled, a little more slowly each time.
      delay = Date.now() - asked > 1000 ? 0 : Math.min(Math.max(delay, 700) * 1.3, 3000);
    } catch (error) {
      failures += 1;
      if (failures >= 3) {
        warning.textContent = "Cannot reach the site right now (" + error.message + "); still trying…";
        warning.hidden = false;
      }
    }
    if (failures > 0) delay = Math.min(Math.max(delay, 700) * 1.3, 3000);
    window.setTimeout(poll, delay);
  }
  window.setInterval(function () { render(shown[0], shown[1]); }, 1000);
  poll();
})();
