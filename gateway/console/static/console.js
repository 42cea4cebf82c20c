/* omnigate console: the live stream (SSE, reconnects with Last-Event-ID),
   the presence heartbeat, canned-reply insertion, the time zone on sign-in,
   remote images shown on click. No build step; htmx does the fragments. */
(function () {
  "use strict";
  var body = document.body;
  var csrf = body.getAttribute("data-csrf");
  var tz = document.getElementById("tz");
  if (tz && window.Intl) { tz.value = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; }

  function post(url, data) {
    var form = new URLSearchParams(data || {});
    form.set("csrf", csrf);
    return fetch(url, {method: "POST", body: form, credentials: "same-origin"});
  }

  if (csrf) {  /* signed in: heartbeat while the page is open */
    var beat = function () { post("/console/heartbeat").catch(function () {}); };
    beat();
    setInterval(beat, 20000);
  }

  /* SLA countdowns tick on the server's clock, not the browser's (an agent's
     PC may be minutes off): the page says the server's time when it was
     rendered (body data-now, ms), every htmx fragment too (the X-Omnigate-Now
     header), and the badges are judged at Date.now() + offset. Amber at the
     badge's data-warn (the console's warning minutes before the due time),
     red at its data-due, as the server would render it then. */
  var offset = 0;
  function serverNow(ms) {
    var n = Number(ms);
    if (ms && isFinite(n)) { offset = n - Date.now(); }
  }
  serverNow(body.getAttribute("data-now"));
  function tickSla() {
    var now = Date.now() + offset;
    document.querySelectorAll(".sla[data-due]").forEach(function (el) {
      if (el.classList.contains("sla-breached")) { return; }
      if (Date.parse(el.getAttribute("data-due")) <= now) {
        el.classList.remove("sla-ok", "sla-warning"); el.classList.add("sla-breached");
      } else if (el.classList.contains("sla-ok") && el.hasAttribute("data-warn")
                 && Date.parse(el.getAttribute("data-warn")) <= now) {
        el.classList.remove("sla-ok"); el.classList.add("sla-warning");
      }
    });
  }
  tickSla();
  setInterval(tickSla, 5000);
  document.addEventListener("htmx:afterRequest", function (ev) {
    var xhr = ev.detail && ev.detail.xhr;
    if (xhr) { serverNow(xhr.getResponseHeader("X-Omnigate-Now")); }
  });

  /* canned replies: insert into the composer */
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest ? ev.target.closest(".canned-insert") : null;
    if (b) {
      var ta = document.getElementById("text");
      ta.value = (ta.value ? ta.value + "\n" : "") + b.getAttribute("data-text");
      ta.focus();
      return;
    }
    var s = ev.target.closest ? ev.target.closest(".show-images") : null;
    if (s) {
      var li = s.closest(".entry");
      li.querySelectorAll("img[data-src]").forEach(function (img) { img.src = img.getAttribute("data-src"); });
      s.parentNode.remove();
    }
  });

  /* a live fragment may carry an entry already shown: keep the first */
  document.addEventListener("htmx:afterSwap", function () {
    tickSla();
    var seen = {};
    document.querySelectorAll("#timeline > li.entry").forEach(function (li) {
      if (seen[li.id]) { li.remove(); } else { seen[li.id] = true; }
    });
  });

  /* live: one EventSource; the browser resends Last-Event-ID when it reconnects */
  var mode = body.getAttribute("data-live");
  if (!mode || !window.EventSource) { return; }
  var layout = document.querySelector(".ticket-layout");
  var after = layout ? layout.getAttribute("data-last-seq") : "";
  var live = document.getElementById("live");
  var es = new EventSource("/console/events" + (after ? "?after=" + after : ""));
  var pending = null;
  es.onopen = function () { live.textContent = live.getAttribute("data-label") + " ●"; live.className = "live on"; };
  es.onerror = function () { live.textContent = live.getAttribute("data-label") + " ○"; live.className = "live off"; };
  es.addEventListener("timeline", function (ev) {
    var e = JSON.parse(ev.data);
    if (mode === "queue") {
      clearTimeout(pending);
      pending = setTimeout(function () { htmx.trigger(body, "live-refresh"); }, 150);
      return;
    }
    if (mode === "ticket" && layout && e.contact_id === layout.getAttribute("data-contact")) {
      if (document.getElementById("entry-" + e.id)) { return; }
      var ticket = layout.getAttribute("data-ticket");
      var last = layout.getAttribute("data-last-seq");
      layout.setAttribute("data-last-seq", String(Math.max(Number(last), e.seq)));
      htmx.ajax("GET", "/console/tickets/" + ticket + "/newer?after=" + (e.seq - 1),
                {target: "#timeline", swap: "beforeend"});
    }
  });
})();
