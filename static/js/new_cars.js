// The new-cars page: show the temperature next to its slider while it moves (the form sends it on "Show").
(function () {
  "use strict";
  const input = document.getElementById("temperature");
  const output = document.querySelector("output[for=temperature]");
  if (!input || !output) return;
  input.addEventListener("input", function () { output.textContent = Number(input.value).toFixed(1); });
})();
