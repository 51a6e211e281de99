// The map of a user's cars: place each car at its (x, y) from the data attributes (percentages), and
// turn two clicks into a morph. Without this script the cars are plain links to their pages.
(function () {
  "use strict";
  const map = document.getElementById("car-map");
  if (!map) return;
  const status = document.getElementById("map-status");
  let first = null;

  map.querySelectorAll(".map-point").forEach(function (point) {
    point.style.left = point.dataset.x + "%";
    point.style.top = point.dataset.y + "%";
    point.addEventListener("click", function (event) {
      event.preventDefault();
      if (first === null || first === point) {
        if (first) first.classList.remove("picked");
        first = first === point ? null : point;
        if (first) first.classList.add("picked");
        status.textContent = first ? "Picked “" + point.title + "”. Click another car to morph into it." : "";
        return;
      }
      const query = new URLSearchParams();
      query.append("pick", first.dataset.id);
      query.append("pick", point.dataset.id);
      window.location.href = map.dataset.morphUrl + "?" + query.toString();
    });
  });
  map.classList.add("placed");
})();
