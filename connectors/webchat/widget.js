/* omnigate webchat widget — served by the daemon at
   /channels/webchat/widget.js?site=SITE; no build step. Frame protocol: README
   "Webchat frame protocol". Text is only ever rendered as text. */
(function () {
  "use strict";
  var CFG = /*OMNIGATE_CONFIG*/null;
  if (!CFG || window.__omnigateWidget) return;
  window.__omnigateWidget = true;
  var script = document.currentScript;
  var src = new URL(script ? script.src : "/channels/webchat/widget.js", location.href);
  var BASE = src.origin + src.pathname.replace(/widget\.js$/, "");
  var SITE = CFG.site;
  var OPT = window.omnigateConfig || {};   /* {transport: "poll"} where websockets are blocked */
  var KEY = "omnigate:" + SITE;
  var lang = ((document.documentElement.lang || navigator.language || "en") + "").toLowerCase();
  var ZH = lang.indexOf("zh") === 0;
  var T = ZH ? {
    open: "打开在线客服", unread: "条新消息", close: "关闭", title: "在线客服", input: "输入消息，按回车发送",
    send: "发送", attach: "添加图片或文件", typing: "客服正在输入…", read: "已读", sent: "已送达",
    sending: "发送中…", offline: "暂时没有客服在线。请留下消息和邮箱，我们会尽快回复。",
    name: "姓名", email: "邮箱", phone: "电话", start: "开始聊天", ended: "会话已结束",
    reconnecting: "正在重新连接…", tooBig: "文件太大", hello: "您好！有什么可以帮您？",
    you: "我", agent: "客服", failed: "发送失败"
  } : {
    open: "Open chat", unread: "new", close: "Close", title: "Chat with us", input: "Type a message, Enter to send",
    send: "Send", attach: "Attach an image or file", typing: "Agent is typing…", read: "Read", sent: "Delivered",
    sending: "Sending…", offline: "No one is online right now. Leave a message and your email, we will get back to you.",
    name: "Name", email: "Email", phone: "Phone", start: "Start chat", ended: "Conversation ended",
    reconnecting: "Reconnecting…", tooBig: "The file is too large", hello: "Hello! How can we help?",
    you: "You", agent: "Agent", failed: "Not sent"
  };
  var greeting = (CFG.greeting || {})[ZH ? "zh-CN" : "en"] || (CFG.greeting || {}).en || T.hello;

  /* ---------------------------------------------------------------- state */
  var st = load();
  function load() {
    try { var s = JSON.parse(localStorage.getItem(KEY) || "{}"); } catch (e) { s = {}; }
    s.queue = s.queue || []; return s;
  }
  function save() {
    try {
      localStorage.setItem(KEY, JSON.stringify({visitor: st.visitor, token: st.token, profile: st.profile,
        queue: st.queue, conv: st.conv}));
    } catch (e) { /* storage full or blocked: the session still works */ }
  }
  var msgs = {};          /* seq -> message frame */
  var refused = [];       /* messages the gateway refused (this page view only) */
  var lastSeq = 0, agentRead = 0, visitorRead = 0;
  var online = true, ended = false, connected = false;

  /* ---------------------------------------------------------------- DOM */
  var host = document.createElement("div");
  host.setAttribute("data-omnigate-webchat", SITE);
  var root = host.attachShadow({mode: "open"});
  var C = CFG.color || "#2563eb";
  root.innerHTML = "<style>" +
    ":host{all:initial}*{box-sizing:border-box;font:14px/1.4 system-ui,-apple-system,'Segoe UI','Noto Sans CJK SC','PingFang SC',sans-serif}" +
    ".l{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;border:0;background:" + C + ";color:#fff;cursor:pointer;box-shadow:0 2px 10px rgba(0,0,0,.25);z-index:2147483646}" +
    ".n{position:absolute;top:-4px;right:-4px;min-width:20px;height:20px;border-radius:10px;background:#d92d20;color:#fff;font-size:12px;line-height:20px;text-align:center;padding:0 5px}.n[hidden]{display:none}" +
    ".l:focus-visible,button:focus-visible,textarea:focus-visible,input:focus-visible{outline:3px solid #111;outline-offset:2px}" +
    ".p{position:fixed;right:20px;bottom:88px;width:360px;max-width:calc(100vw - 40px);height:520px;max-height:calc(100vh - 110px);background:#fff;color:#111;border-radius:12px;box-shadow:0 4px 24px rgba(0,0,0,.3);display:flex;flex-direction:column;overflow:hidden;z-index:2147483647}" +
    ".p[hidden]{display:none}.h{background:" + C + ";color:#fff;padding:12px 14px;display:flex;align-items:center;justify-content:space-between}" +
    ".h h2{margin:0;font-size:16px;font-weight:600}.x{background:transparent;border:0;color:#fff;font-size:20px;cursor:pointer;min-width:32px;min-height:32px}" +
    ".g{flex:1;overflow-y:auto;padding:12px;background:#f7f7f8}.m{margin:6px 0;max-width:80%;padding:8px 10px;border-radius:10px;white-space:pre-wrap;word-wrap:break-word}" +
    ".v{margin-left:auto;background:" + C + ";color:#fff}.a{background:#fff;border:1px solid #ddd}.s{margin:8px auto;color:#555;font-size:12px;text-align:center}" +
    ".im{display:block;max-width:100%;max-height:200px;border-radius:6px;margin-top:4px}a{color:inherit}.st{display:block;font-size:11px;opacity:.8;text-align:right}.t{min-height:18px;padding:0 12px;color:#555;font-size:12px}" +
    ".f{display:flex;gap:6px;padding:8px;border-top:1px solid #ddd;align-items:flex-end}textarea{flex:1;resize:none;border:1px solid #bbb;border-radius:8px;padding:8px;height:40px;max-height:120px}" +
    ".b{border:0;border-radius:8px;background:" + C + ";color:#fff;padding:9px 12px;cursor:pointer}.at{background:#eee;color:#111}" +
    ".o{padding:8px 12px;background:#fff8e1;border-bottom:1px solid #eed;font-size:13px}.o input,.pc input{width:100%;margin:4px 0 6px;padding:6px;border:1px solid #bbb;border-radius:6px}" +
    ".pc{padding:12px}.pc label,.o label{display:block;font-size:12px;color:#333}.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}" +
    "</style>" +
    "<button class='l' type='button' aria-haspopup='dialog' aria-expanded='false'><svg width='26' height='26' viewBox='0 0 24 24' aria-hidden='true'><path fill='currentColor' d='M4 4h16v12H7l-3 3z'/></svg><span class='n' aria-hidden='true' hidden></span></button>" +
    "<div class='p' role='dialog' aria-modal='false' hidden>" +
    "<div class='h'><h2></h2><button class='x' type='button'>×</button></div>" +
    "<div class='o' hidden><p></p><label>" + "<span class='oe'></span><input class='oi' type='email' autocomplete='email'></label></div>" +
    "<form class='pc' hidden><label><span></span><input name='name' autocomplete='name'></label>" +
    "<label><span></span><input name='email' type='email' autocomplete='email'></label>" +
    "<label><span></span><input name='phone' type='tel' autocomplete='tel'></label><button class='b' type='submit'></button></form>" +
    "<div class='g' role='log' aria-live='polite' tabindex='0'></div><div class='t' aria-live='polite'></div>" +
    "<form class='f'><label class='sr' for='og-in'></label><textarea id='og-in' rows='1'></textarea>" +
    "<input class='sr fi' type='file' accept='image/png,image/jpeg,image/gif,image/webp,application/pdf' tabindex='-1'>" +
    "<button class='b at' type='button'>📎</button><button class='b sd' type='submit'></button></form></div>";
  function q(s) { return root.querySelector(s); }
  var launcher = q(".l"), panel = q(".p"), log = q(".g"), typingEl = q(".t"), input = q("textarea"),
    form = q(".f"), fileIn = q(".fi"), attachBtn = q(".at"), offlineBox = q(".o"), prechat = q(".pc");
  launcher.setAttribute("aria-label", T.open);
  panel.setAttribute("aria-label", T.title);
  q(".h h2").textContent = T.title;
  q(".x").setAttribute("aria-label", T.close);
  q("label[for=og-in]").textContent = T.input;
  input.setAttribute("placeholder", T.input);
  q(".sd").textContent = T.send;
  attachBtn.setAttribute("aria-label", T.attach);
  offlineBox.querySelector("p").textContent = T.offline;
  q(".oe").textContent = T.email;
  var pcs = prechat.querySelectorAll("label span");
  pcs[0].textContent = T.name; pcs[1].textContent = T.email; pcs[2].textContent = T.phone;
  prechat.querySelector("button").textContent = T.start;
  var greet = line("s", greeting);
  log.appendChild(greet);

  function line(cls, text) {
    var d = document.createElement("div");
    d.className = cls;
    d.textContent = text;    /* text only, never HTML */
    return d;
  }

  function openPanel() {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    showPrechat();
    (prechat.hidden ? input : prechat.querySelector("input")).focus();
    markRead(); badge();
    if (!ws && !polling) connect();
  }
  function closePanel() {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    badge(); launcher.focus();
  }
  launcher.addEventListener("click", function () { panel.hidden ? openPanel() : closePanel(); });
  q(".x").addEventListener("click", closePanel);
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") closePanel(); });
  function showPrechat() {
    prechat.hidden = !(CFG.prechat && !st.profile && !window.omnigateUser);
  }
  prechat.addEventListener("submit", function (e) {
    e.preventDefault();
    var p = {};
    ["name", "email", "phone"].forEach(function (k) { var v = prechat.elements[k].value.trim(); if (v) p[k] = v; });
    st.profile = p; save();
    send({type: "profile", name: p.name, email: p.email, phone: p.phone});
    prechat.hidden = true; input.focus();
  });

  /* ---------------------------------------------------------------- render */
  function render() {
    var keep = log.scrollTop + log.clientHeight >= log.scrollHeight - 30;
    while (log.lastChild && log.lastChild !== greet) log.removeChild(log.lastChild);
    var seqs = Object.keys(msgs).map(Number).sort(function (a, b) { return a - b; });
    seqs.forEach(function (s) { log.appendChild(bubble(msgs[s], s <= agentRead ? T.read : T.sent)); });
    refused.forEach(function (m) { log.appendChild(bubble(m, T.failed + (m.reason ? ": " + m.reason : ""))); });
    st.queue.forEach(function (m) { log.appendChild(bubble({from: "visitor", text: m.text, files: m.files}, T.sending)); });
    if (ended) log.appendChild(line("s", T.ended));
    badge();
    if (!connected && (ws || polling) && st.queue.length) log.appendChild(line("s", T.reconnecting));
    if (keep) log.scrollTop = log.scrollHeight;
  }
  function bubble(m, status) {
    var mine = m.from === "visitor";
    var d = line("m " + (mine ? "v" : "a"), m.text || "");
    d.setAttribute("data-from", m.from);
    if (m.seq) d.setAttribute("data-seq", m.seq);
    (m.files || []).forEach(function (f) { d.appendChild(fileEl(f)); });
    var lab = document.createElement("span");
    lab.className = "sr";
    lab.textContent = (mine ? T.you : (m.author || T.agent)) + ": ";
    d.insertBefore(lab, d.firstChild);
    if (mine) { var s = line("st", status); s.className = "st og-status"; d.appendChild(s); }
    return d;
  }

  function fileEl(f) {
    if (!f.sha256 || !st.token) return line("st", "📎 " + (f.name || "file"));
    var u = window.omnigateUser, url = BASE + "files/" + f.sha256 + "?site=" + encodeURIComponent(SITE) +
      "&visitor=" + encodeURIComponent(st.visitor) + "&token=" + encodeURIComponent(st.token) +
      (u ? "&user=" + encodeURIComponent(u.id) + "&expires=" + encodeURIComponent(u.expires) +
        "&signature=" + encodeURIComponent(u.signature) + (u.email ? "&email=" + encodeURIComponent(u.email) : "") +
        (u.phone ? "&phone=" + encodeURIComponent(u.phone) : "") : "");
    var a = document.createElement("a");
    a.href = url; a.target = "_blank"; a.rel = "noopener noreferrer";
    if (/^image\//.test(f.content_type || "")) {
      var img = document.createElement("img");
      img.src = url; img.alt = f.name || "image"; img.className = "im";
      a.appendChild(img);
    } else {
      a.textContent = "📎 " + (f.name || "file");
      a.className = "st";
    }
    return a;
  }

  /* ---------------------------------------------------------------- frames in */
  function onFrame(f) {
    if (f.type === "welcome") {
      st.visitor = f.visitor; st.token = f.token; st.conv = f.conversation; save();
      connected = true; ended = false;
      f.history.forEach(addMsg);
      agentRead = Math.max(agentRead, f.agent_read_seq || 0);
      visitorRead = Math.max(visitorRead, f.visitor_read_seq || 0);
      online = f.agents_online !== false;
      offlineBox.hidden = online;
      flush();
    } else if (f.type === "message") {
      addMsg(f);
      if (f.from === "agent") { typingEl.textContent = ""; markRead(); }
    } else if (f.type === "ack") {
      st.queue = st.queue.filter(function (m) { return m.cid !== f.cid; });
      inflight = null; save();
      var p = pending[f.cid];
      if (p) { p.seq = f.seq; p.at = f.at; p.files = f.files || p.files; addMsg(p); delete pending[f.cid]; }
      flush();
    } else if (f.type === "typing") {
      typingEl.textContent = f.on ? T.typing : "";
      clearTimeout(typingTimer);
      if (f.on) typingTimer = setTimeout(function () { typingEl.textContent = ""; }, 6000);
    } else if (f.type === "read") {
      agentRead = Math.max(agentRead, f.seq);
    } else if (f.type === "ended") {
      ended = true;
    } else if (f.type === "error") {
      if (f.cid) {
        /* refused for good (too long, a file not allowed): shown as not sent, with the reason */
        st.queue = st.queue.filter(function (m) {
          if (m.cid !== f.cid || !/too_long|file|empty|bad_cid/.test(f.code)) return true;
          refused.push({from: "visitor", text: m.text, files: (m.files || []).map(function (x) { return {name: x.name}; }),
            reason: f.reason});
          return false;
        });
        inflight = null; save(); flush();
      }
    }
    render();
  }
  var typingTimer;
  function addMsg(m) {
    if (m.seq > lastSeq) { lastSeq = m.seq; ended = false; }
    msgs[m.seq] = m;
    if (m.cid) st.queue = st.queue.filter(function (x) { return x.cid !== m.cid; });
  }
  function badge() {
    var n = 0, el = q(".n");
    Object.keys(msgs).forEach(function (s) { if (msgs[s].from === "agent" && +s > visitorRead) n++; });
    n = panel.hidden ? n : 0;
    el.hidden = !n; el.textContent = n > 9 ? "9+" : String(n);
    launcher.setAttribute("aria-label", T.open + (n ? " (" + n + " " + T.unread + ")" : ""));
  }
  function markRead() {
    if (panel.hidden || document.hidden) return;
    var top = 0;
    Object.keys(msgs).forEach(function (s) { if (msgs[s].from === "agent" && +s > top) top = +s; });
    if (top > visitorRead && connected) { visitorRead = top; send({type: "read", seq: top}); }
  }
  document.addEventListener("visibilitychange", markRead);

  /* ---------------------------------------------------------------- frames out */
  var pending = {}, inflight = null;
  function hello() {
    return {type: "hello", visitor: st.visitor, token: st.token, user: window.omnigateUser || null,
      profile: st.profile || null, lang: ZH ? "zh-CN" : "en", after: lastSeq,
      page: {url: location.href, title: document.title}};
  }
  function newCid() {
    var a = new Uint8Array(12); crypto.getRandomValues(a);
    return "c" + Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function queueMessage(text, files) {
    var m = {type: "message", cid: newCid(), text: text};
    if (files) m.files = files;
    if (!online) m.form = "offline";
    st.queue.push(m); save(); render(); flush();
  }
  /* one message in flight at a time: acks come back in order, the queue stays in order */
  function flush() {
    if (!connected || inflight || !st.queue.length) return;
    var m = st.queue[0];
    inflight = m.cid;
    pending[m.cid] = {from: "visitor", cid: m.cid, text: m.text,
      files: (m.files || []).map(function (f) { return {name: f.name}; })};
    var frame = {type: "message", cid: m.cid, text: m.text};
    if (m.files) frame.files = m.files;
    if (m.form) frame.form = m.form;
    send(frame);
  }
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    var em = q(".oi").value.trim();
    if (!online && em && (!st.profile || st.profile.email !== em)) {
      st.profile = Object.assign({}, st.profile || {}, {email: em}); save();
      send({type: "profile", name: st.profile.name, email: em, phone: st.profile.phone});
    }
    input.value = "";
    typing(false);
    queueMessage(text);
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit")); }
  });
  var typingSent = 0, typingStop, typingNext = null;
  input.addEventListener("input", function () {
    /* the agent sees a live preview: at most one frame per 400 ms, the latest text last */
    var now = Date.now();
    if (now - typingSent > 400) { typingSent = now; typing(true); }
    else if (!typingNext) typingNext = setTimeout(function () { typingNext = null; typingSent = Date.now(); typing(true); },
      400 - (now - typingSent));
    clearTimeout(typingStop);
    typingStop = setTimeout(function () { typing(false); }, 3000);
  });
  function typing(on) { if (!on) { clearTimeout(typingNext); typingNext = null; } if (connected) send({type: "typing", on: on, text: on ? input.value.slice(0, 200) : ""}); }
  attachBtn.addEventListener("click", function () { fileIn.click(); });
  fileIn.addEventListener("change", function () {
    var f = fileIn.files[0];
    fileIn.value = "";
    if (!f) return;
    if (f.size > (CFG.max_file_bytes || 5242880)) { log.appendChild(line("s", T.tooBig)); return; }
    var r = new FileReader();
    r.onload = function () {
      queueMessage("", [{name: f.name, content_type: f.type, data_base64: String(r.result).split(",")[1]}]);
    };
    r.readAsDataURL(f);
  });

  /* ---------------------------------------------------------------- transport */
  var ws = null, polling = false, failures = 0, everOpen = false;
  function send(frame) {
    if (polling) return postPoll([frame], 0);
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(frame));
  }
  function connect() {
    if (OPT.transport === "poll" || (!everOpen && failures >= 2)) { startPolling(); return; }
    var url = BASE.replace(/^http/, "ws") + "ws?site=" + encodeURIComponent(SITE);
    var sock = ws = new WebSocket(url);
    sock.onopen = function () { everOpen = true; failures = 0; sock.send(JSON.stringify(hello())); };
    sock.onmessage = function (e) { try { onFrame(JSON.parse(e.data)); } catch (err) { /* ignore a bad frame */ } };
    sock.onclose = function () {
      if (ws !== sock) return;
      connected = false; inflight = null; failures++;
      render();
      setTimeout(connect, Math.min(15000, 500 * Math.pow(2, failures)));
    };
  }
  function startPolling() {
    polling = true; ws = null;
    (function loop() {
      postPoll([], 25).then(function () { setTimeout(loop, 100); },
        function () { connected = false; inflight = null; render(); setTimeout(loop, 3000); });
    })();
  }
  function postPoll(frames, wait) {
    return fetch(BASE + "poll?site=" + encodeURIComponent(SITE), {
      /* text/plain: a "simple" cross-origin request, no preflight; the server checks Origin */
      method: "POST", headers: {"Content-Type": "text/plain"}, credentials: "omit",
      body: JSON.stringify({frames: [hello()].concat(frames), wait: wait})
    }).then(function (r) {
      if (!r.ok) throw new Error("poll " + r.status);
      return r.json();
    }).then(function (d) { d.frames.forEach(onFrame); });
  }

  window.omnigateChat = {open: openPanel, close: closePanel};
  function mount() { document.body.appendChild(host); render(); if (st.queue.length || st.visitor) connect(); }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
