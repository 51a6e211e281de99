// "… ago" under a gallery card or a result is rendered by the server, and cards are cached for up to
// 60 s, so that text can lag. Every <time class="ago" datetime="..."> is rewritten here from the
// browser's clock, at load and each 30 s after; without JavaScript the server's text stays.
(function () {
  "use strict";
  const times = document.querySelectorAll("time.ago[datetime]");
  if (!times.length || typeof Intl === "undefined" || !Intl.RelativeTimeFormat) return;
  const format = new Intl.RelativeTimeFormat(document.documentElement.lang || "en", { numeric: "auto" });
  const UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60]];

  function ago(seconds) {
    if (seconds < 45) return "just now";
    for (const [unit, size] of UNITS) {
      if (seconds >= size) return format.format(-Math.floor(seconds / size), unit);
    }
    return format.format(-1, "minute");
  }

  function update() {
    const now = Date.now();
    times.forEach(function (time) {
      const at = Date.parse(time.getAttribute("datetime"));
      if (!isNaN(at)) time.textContent = ago(Math.max(0, (now - at) / 1000));
    });
  }

  update();
  setInterval(update, 30000);
})();
