// Sends the photos in small batches (and a zip on its own) as XHRs asking for JSON: the bar shows
// bytes uploaded, then the server's report of each batch is added to the table as it arrives.
(function () {
  const form = document.getElementById("upload-form");
  const batchSize = parseInt(form.dataset.batch, 10);
  const changeUrl = form.dataset.changeUrl;
  const statusLine = document.getElementById("upload-status");
  const bar = document.getElementById("upload-bar");
  const table = document.querySelector("#report-table tbody");
  const totals = {added: 0, skipped: 0, flagged: 0};

  function cell(row, text, href) {
    const td = row.insertCell();
    if (href) { const a = document.createElement("a"); a.href = href; a.textContent = text; td.appendChild(a); }
    else { td.textContent = text; }
  }
  function addResults(results) {
    for (const r of results) {
      const row = table.insertRow();
      cell(row, r.name);
      if (r.added) {
        cell(row, "added as #" + r.id, changeUrl.replace("/0/", "/" + r.id + "/"));
        cell(row, r.flags.join("; "));
      } else {
        cell(row, "skipped");
        cell(row, r.skipped);
      }
    }
  }
  function send(data, label, done, total, bytesBefore, totalBytes) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", window.location.href);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) {
          bar.value = 100 * (bytesBefore + e.loaded) / totalBytes;
          statusLine.textContent = `Uploading ${label}: ${done} of ${total} files sent…`;
        }
      };
      xhr.upload.onload = () => { statusLine.textContent = `Checking ${label} on the server (hashes, duplicates, car-likeness)…`; };
      xhr.onload = () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = {error: `The server answered ${xhr.status}.`}; }
        if (xhr.status !== 200) { reject(new Error(body.error || `The server answered ${xhr.status}.`)); return; }
        resolve(body);
      };
      xhr.onerror = () => reject(new Error("The connection failed; the files already reported were added."));
      xhr.send(data);
    });
  }
  form.addEventListener("submit", async (event) => {
    const files = Array.from(form.elements["files"].files);
    const archive = form.elements["archive"].files[0];
    if (!files.length && !archive) return;  // let the server say what is missing
    event.preventDefault();
    document.getElementById("upload-button").disabled = true;
    document.getElementById("upload-progress").hidden = false;
    document.getElementById("upload-report").hidden = false;
    table.innerHTML = "";
    const token = form.elements["csrfmiddlewaretoken"].value;
    const batches = [];
    for (let i = 0; i < files.length; i += batchSize) batches.push({files: files.slice(i, i + batchSize)});
    if (archive) batches.push({archive: archive});
    const totalBytes = files.reduce((n, f) => n + f.size, 0) + (archive ? archive.size : 0) || 1;
    let bytesBefore = 0, sent = 0;
    const total = files.length + (archive ? 1 : 0);
    try {
      for (const batch of batches) {
        const data = new FormData();
        data.append("csrfmiddlewaretoken", token);
        let size = 0;
        if (batch.archive) { data.append("archive", batch.archive); size = batch.archive.size; }
        else { for (const f of batch.files) { data.append("files", f); size += f.size; } }
        const count = batch.archive ? 1 : batch.files.length;
        const label = batch.archive ? batch.archive.name : `photos ${sent + 1}–${sent + count}`;
        const report = await send(data, label, sent + count, total, bytesBefore, totalBytes);
        bytesBefore += size; sent += count;
        totals.added += report.added; totals.skipped += report.skipped; totals.flagged += report.flagged;
        addResults(report.results);
        bar.value = 100 * bytesBefore / totalBytes;
        document.getElementById("report-summary").textContent =
          `${totals.added} added, ${totals.skipped} skipped, ${totals.flagged} flagged`;
      }
      statusLine.textContent = `Done: ${sent} of ${total} uploads processed.`;
    } catch (error) {
      statusLine.textContent = "Stopped: " + error.message;
    } finally {
      document.getElementById("upload-button").disabled = false;
    }
  });
})();
