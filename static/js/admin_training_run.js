// Polls the run's progress endpoint every 2 s until it finishes; no reload needed.
(function () {
  const box = document.getElementById("run-progress");
  if (box.dataset.finished === "1") return;
  const digits = {train_mse: 5, val_mse: 5, train_kl: 1, val_kl: 1, val_psnr: 2};
  const text = (id, value) => { document.getElementById(id).textContent = value; };
  let lastHistory = -1, lastPicture = "";
  async function poll() {
    let data;
    try {
      const response = await fetch(box.dataset.url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
      data = await response.json();
    } catch (e) { setTimeout(poll, 5000); return; }
    text("run-status", data.status_display);
    text("run-phase", data.phase);
    text("run-epoch", data.epoch);
    text("run-elapsed", data.elapsed || "–");
    text("run-eta", data.eta ? `· about ${data.eta} left` : "");
    text("run-best", data.best_epoch || "–");
    document.getElementById("run-bar").value = data.percent;
    for (const td of document.querySelectorAll("#run-latest td")) {
      const value = data.latest[td.dataset.key];
      td.textContent = value == null ? "–" : (td.dataset.key in digits ? Number(value).toFixed(digits[td.dataset.key]) : value);
    }
    if (data.history_length !== lastHistory && data.chart_svg) {
      document.getElementById("run-chart").innerHTML = data.chart_svg;  // server-drawn, numbers only
      lastHistory = data.history_length;
    }
    if (data.picture_url && data.picture_url !== lastPicture) {
      const img = document.getElementById("run-picture");
      img.src = data.picture_url; img.style.display = ""; lastPicture = data.picture_url;
    }
    const log = document.getElementById("run-log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = data.log_tail;
    if (atBottom) log.scrollTop = log.scrollHeight;
    const error = document.getElementById("run-error");
    error.style.display = data.error ? "" : "none"; error.textContent = data.error;
    if (data.finished) { window.location.reload(); return; }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 1000);
})();
