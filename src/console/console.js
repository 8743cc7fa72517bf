// callrec console: shows where each player is, for screen readers too, and
// says so when the audio cannot be loaded (a set that fails verification is
// refused by the server and must not look like silence).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  function mmss(t) {
    if (!isFinite(t)) return "?";
    var s = Math.round(t);
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }
  document.querySelectorAll("audio").forEach(function (a) {
    var status = document.createElement("p");
    status.className = "player-status";
    status.setAttribute("aria-live", "polite");
    a.insertAdjacentElement("afterend", status);
    function show() {
      status.textContent = mmss(a.currentTime) + " of " + mmss(a.duration) + (a.ended ? " (played to the end)" : "");
    }
    ["loadedmetadata", "timeupdate", "seeked", "ended"].forEach(function (e) {
      a.addEventListener(e, show);
    });
    a.addEventListener("error", function () {
      status.textContent = "The audio could not be loaded.";
      status.setAttribute("role", "alert");
    });
  });
});
