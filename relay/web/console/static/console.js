// ses-relay console: refresh the overview in place every 5 seconds (no page reload).
// The server renders the fragment (escaped, no script in it); on a lost session, go to
// the login page.
"use strict";
(function () {
  var live = document.getElementById("live");
  if (!live) { return; }
  var note = document.getElementById("live-note");
  function refresh() {
    fetch(live.getAttribute("data-source"), {credentials: "same-origin",
                                             headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login"); return null; }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (body) {
        if (body) {
          live.innerHTML = body.html;
          note.textContent = "live: refreshed every 5 s";
          live.setAttribute("data-refreshed", String(body.data.at));
        }
      })
      .catch(function (e) { note.textContent = "live: refresh failed (" + e.message + ")"; });
  }
  window.setInterval(refresh, 5000);
})();
