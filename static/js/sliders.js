// The latent sliders under a result: each move asks the site to decode the moved latent
// (GET <edit.png>?offsets=...) and swaps the picture. At most one request is in flight; moves made
// meanwhile are coalesced into one request with the latest values, so a fast drag never queues up.
// The time from a move to the picture that answers it is written under it (and in data-last-ms); for
// moves coalesced while a request was in flight, it counts from the first of them.
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
  let movedAt = 0; // the earliest move the request in flight answers
  let pendingSince = 0; // the earliest move made while a request was in flight
  let shownOffsets = "";

  function offsets() {
    return inputs.map(function (input) { return Number(input.value).toFixed(1); }).join(",");
  }

  function update() {
    const wanted = offsets();
    hidden.value = wanted;
    if (busy) {
      if (!pending) pendingSince = performance.now();
      pending = true;
      return;
    }
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
    if (pending) {
      movedAt = pendingSince; // its picture answers moves made while the last one was on its way
      update();
    }
  }

  picture.addEventListener("load", function () { if (busy) done(true); });
  picture.addEventListener("error", function () { if (busy) done(false); });
  function moved() {
    if (!busy) movedAt = performance.now();
    update();
  }

  inputs.forEach(function (input) { input.addEventListener("input", moved); });
  reset.addEventListener("click", function () {
    inputs.forEach(function (input) { input.value = "0"; });
    moved();
  });
  hidden.value = offsets();
  shownOffsets = hidden.value;
})();
