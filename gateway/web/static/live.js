// Live blocks: every element with data-live is refetched (as an HTML fragment, header X-Live) every
// data-every milliseconds and replaced in place: the page updates without reloading.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-live]").forEach(function (el) {
    var url = el.getAttribute("data-live") || (location.pathname + location.search);
    var every = parseInt(el.getAttribute("data-every"), 10) || 3000;
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(url, { headers: { "X-Live": "1" }, credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (r.status === 401) { location.href = "/login"; return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) { if (html !== null && html !== undefined) el.innerHTML = html; })
        .catch(function () { /* the next tick tries again */ })
        .finally(function () { busy = false; });
    }, every);
  });
});
