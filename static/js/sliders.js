// The latent sliders under a result: each move asks the site to decode the moved latent
// (GET <edit.png>?offsets=...) and swaps the picture. At most one request is in flight; moves made
// meanwhile are coalesced into one request with the latest values, so a fast drag never queues up.
// The time from a move to the new picture being shown is written under it (and in data-last-ms).
(function () {
  "use strict";
  const box = document.getElementById("sliders");
  if (!box) return;
  const picture = document.getElementById("slider-image");
  const timing = document.getElementById("slider-timing");
  const hidden = document.getElementById("slider-offsets");
  const reset = document.getElementById("slider-reset");
  const inputs = Array.from(box.querySelectorAll("input[type=range]"));
  const url = box.dataset.editUrl;
  let busy = false;
  let pending = false;
  let movedAt = 0;
  let shownOffsets = "";

  function offsets() {
    return inputs.map(function (input) { return Number(input.value).toFixed(1); }).join(",");
  }

  function update() {
    const wanted = offsets();
    hidden.value = wanted;
    if (busy) { pending = true; return; }
    if (wanted === shownOffsets) return;
    busy = true;
    pending = false;
    shownOffsets = wanted;
    picture.src = url + "?offsets=" + encodeURIComponent(wanted);
  }

  function done(ok) {
    const ms = performance.now() - movedAt;
    busy = false;
    if (ok) {
      timing.textContent = "Updated in " + Math.round(ms) + " ms";
      box.dataset.lastMs = ms.toFixed(1);
      box.dataset.updates = String(Number(box.dataset.updates || 0) + 1);
      box.dataset.shown = shownOffsets;
    } else {
      timing.textContent = "The picture could not be updated; try again.";
      shownOffsets = "";
    }
    if (pending) update();
  }

  picture.addEventListener("load", function () { if (busy) done(true); });
  picture.addEventListener("error", function () { if (busy) done(false); });
  inputs.forEach(function (input) {
    input.addEventListener("input", function () {
      if (!busy) movedAt = performance.now();
      update();
    });
  });
  reset.addEventListener("click", function () {
    inputs.forEach(function (input) { input.value = "0"; });
    movedAt = performance.now();
    update();
  });
  hidden.value = offsets();
  shownOffsets = hidden.value;
})();
