// egressd console: times in the viewer's local time, UTC on hover.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var d = new Date(el.getAttribute("datetime"));
    if (isNaN(d) || d.getFullYear() < 2000) { return; }
    el.title = el.textContent;
    el.textContent = d.toLocaleString();
  });
});
