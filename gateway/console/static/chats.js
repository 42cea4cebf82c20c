/* omnigate console: the live chats page. One websocket (the session cookie,
   same origin) gives a snapshot and then the webchat hub's events; replies are
   POSTed with the CSRF token; the agent's typing and read marks go back on the
   socket. Everything the visitor wrote is set as text, never as HTML. */
(function () {
  "use strict";
  var root = document.getElementById("chats");
  var tpl = document.getElementById("chat-template");
  if (!root || !tpl) { return; }
  var csrf = document.body.getAttribute("data-csrf");
  var none = document.getElementById("chats-none");
  var chats = {};  /* conversation → {el, seqs, lastVisitor} */
  var ws = null;
  var backoff = 500;

  function send(frame) { if (ws && ws.readyState === 1) { ws.send(JSON.stringify(frame)); } }

  function chat(conv) {
    var c = chats[conv];
    if (c) { return c; }
    var el = tpl.content.firstElementChild.cloneNode(true);
    el.setAttribute("data-conversation", conv);
    c = chats[conv] = {el: el, seqs: {}, typingOn: false, stop: null};
    var form = el.querySelector(".chat-reply");
    var box = form.querySelector("textarea");
    box.addEventListener("input", function () {
      if (!c.typingOn) { c.typingOn = true; send({type: "typing", conversation: conv, on: true}); }
      clearTimeout(c.stop);
      c.stop = setTimeout(function () { c.typingOn = false; send({type: "typing", conversation: conv, on: false}); }, 3000);
    });
    box.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
    });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var text = box.value;
      if (!text.trim()) { return; }
      var data = new URLSearchParams({csrf: csrf, conversation: conv, text: text});
      var notice = form.querySelector(".chat-notice");
      notice.textContent = "";
      fetch("/console/chats/reply", {method: "POST", body: data, credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (a) {
          if (a.ok) {
            box.value = "";
            if (c.typingOn) { c.typingOn = false; send({type: "typing", conversation: conv, on: false}); }
          } else { notice.textContent = root.getAttribute("data-refused") + " " + a.reason; }
        })
        .catch(function (err) { notice.textContent = root.getAttribute("data-refused") + " " + err; });
    });
    root.appendChild(el);
    none.hidden = true;
    return c;
  }

  function update(ev) {
    var c = chat(ev.conversation), el = c.el;
    var name = ev.name || ev.visitor || ev.conversation;
    el.querySelector(".chat-name").textContent = name;
    el.setAttribute("aria-label", name);
    var state = el.querySelector(".chat-state");
    state.textContent = ev.online ? root.getAttribute("data-online") : root.getAttribute("data-offline");
    state.className = "chat-state " + (ev.online ? "online" : "offline");
    var url = el.querySelector(".chat-url");
    var page = ev.page || {};
    url.textContent = page.title ? page.title + " — " + (page.url || "") : (page.url || "");
    if (page.url && /^https?:/.test(page.url)) { url.href = page.url; } else { url.removeAttribute("href"); }
    var tl = el.querySelector(".chat-ticket-link");
    if (ev.ticket_id) { tl.textContent = ev.ticket_id; tl.href = "/console/tickets/" + encodeURIComponent(ev.ticket_id); }
    el.querySelector(".chat-ticket").hidden = !ev.ticket_id;
  }

  function message(ev) {
    var c = chat(ev.conversation);
    if (c.seqs[ev.seq]) { return; }
    c.seqs[ev.seq] = true;
    var li = document.createElement("li");
    li.className = "m";
    li.setAttribute("data-from", ev.from);
    li.setAttribute("data-seq", ev.seq);
    var who = document.createElement("b");
    who.textContent = (ev.from === "agent" ? (ev.author || root.getAttribute("data-agent")) : root.getAttribute("data-visitor")) + ": ";
    li.appendChild(who);
    li.appendChild(document.createTextNode(ev.text || ""));
    var log = c.el.querySelector(".chat-log");
    var after = null;  /* keep seq order whatever the arrival order */
    log.querySelectorAll("li").forEach(function (x) { if (!after && +x.getAttribute("data-seq") > ev.seq) { after = x; } });
    log.insertBefore(li, after);
    if (ev.from === "visitor") {
      typing({conversation: ev.conversation, from: "visitor", on: false});
      if (document.visibilityState === "visible") { send({type: "read", conversation: ev.conversation, seq: ev.seq}); }
    }
  }

  function typing(ev) {
    if (ev.from !== "visitor") { return; }
    var c = chat(ev.conversation);
    var p = c.el.querySelector(".chat-typing");
    var on = ev.on !== false && !!(ev.text || "").length;
    p.hidden = !on;
    c.el.querySelector(".chat-preview").textContent = on ? ev.text : "";
  }

  function onEvent(ev) {
    if (ev.type === "snapshot") {
      ev.chats.forEach(function (ch) {
        update(ch);
        (ch.messages || []).forEach(message);
      });
    } else if (ev.type === "chat") { update(ev); }
    else if (ev.type === "message") { message(ev); }
    else if (ev.type === "ticket") {
      var c = chats[ev.conversation];
      if (c) {
        var tl = c.el.querySelector(".chat-ticket-link");
        tl.textContent = ev.ticket_id; tl.href = "/console/tickets/" + encodeURIComponent(ev.ticket_id);
        c.el.querySelector(".chat-ticket").hidden = false;
      }
    } else if (ev.type === "typing") { typing(ev); }
    else if (ev.type === "ended") {
      var e = chats[ev.conversation];
      if (e) { e.el.querySelector(".chat-state").textContent = root.getAttribute("data-offline"); }
    }
  }

  function connect() {
    var proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + "/console/chats/socket");
    ws.onopen = function () { backoff = 500; };
    ws.onmessage = function (m) { try { onEvent(JSON.parse(m.data)); } catch (e) { /* a bad frame: skip */ } };
    ws.onclose = function () { setTimeout(connect, backoff); backoff = Math.min(backoff * 2, 10000); };
  }
  connect();
})();
