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

// The schedule form: the next runs (or what is wrong) as the cron is typed, from
// the API; the payload's length against its limit, and whether it is JSON.
document.addEventListener("DOMContentLoaded", function () {
  var cron = document.getElementById("cron");
  var cronHelp = document.getElementById("cron-help");
  if (cron && cronHelp) {
    var timer = null, asked = 0;
    var check = function () {
      var expr = cron.value.trim();
      if (expr === "") { return; }
      var n = ++asked;
      fetch("/console/api/v1/schedules/next?cron=" + encodeURIComponent(expr), { credentials: "same-origin" })
        .then(function (resp) { return resp.json().then(function (body) { return { ok: resp.ok, body: body }; }); })
        .then(function (res) {
          if (n !== asked) { return; }
          if (!res.ok) {
            cronHelp.className = "help message";
            cronHelp.textContent = res.body.error || "not a valid cron expression";
            return;
          }
          cronHelp.className = "help ok";
          cronHelp.textContent = "Next, in your local time: " + res.body.next.map(function (t) {
            return new Date(t).toLocaleString();
          }).join("; ");
        });
    };
    cron.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(check, 200); });
    check();
  }
  var payload = document.getElementById("payload");
  var payloadHelp = document.getElementById("payload-help");
  if (payload && payloadHelp) {
    var max = parseInt(payload.getAttribute("data-max"), 10);
    var count = function () {
      var n = Array.from(payload.value).length;
      var msg = n + " / " + max + " characters";
      var bad = n > max;
      if (payload.value.trim() !== "") {
        try { JSON.parse(payload.value); msg += ", valid JSON"; } catch (e) { msg += ", not valid JSON: " + e.message; bad = true; }
      }
      payloadHelp.textContent = msg;
      payloadHelp.className = bad ? "help message" : "help";
    };
    payload.addEventListener("input", count);
    count();
  }
});
