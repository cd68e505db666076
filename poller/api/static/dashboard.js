// Slipway dashboard: refresh the server-rendered sections in place, follow running builds'
// logs, and send approval decisions with the token the user entered once (sessionStorage).
(function () {
  "use strict";
  var KEY = "slipway.token";
  var sections = document.getElementById("sections");
  var flashBox = document.getElementById("flash");
  var logCache = {};
  var busy = false;

  function token() { return sessionStorage.getItem(KEY) || ""; }

  function headers(extra) {
    var h = extra || {};
    if (token()) { h["Authorization"] = "Bearer " + token(); }
    return h;
  }

  function flash(text, bad) {
    flashBox.textContent = text;
    flashBox.className = bad ? "bad" : "ok";
    flashBox.hidden = false;
  }

  function showTokenState() {
    var set = !!token();
    document.getElementById("token-state").textContent = set ? "token set for this tab" : "";
    document.getElementById("token-forget").hidden = !set;
  }

  function fillLogs() {
    var pres = sections.querySelectorAll("pre.live-log");
    pres.forEach(function (pre) {
      var id = pre.getAttribute("data-build-id");
      if (logCache[id] !== undefined && pre.textContent !== logCache[id]) {
        pre.textContent = logCache[id];
        pre.scrollTop = pre.scrollHeight;
      }
    });
  }

  function refresh() {
    if (busy) { return Promise.resolve(); }
    busy = true;
    return fetch("/dashboard/sections", {headers: headers(), cache: "no-store"})
      .then(function (r) {
        if (!r.ok) { throw new Error(r.status === 401 || r.status === 403 ? "the API token is needed to read" : "HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        var open = {};
        sections.querySelectorAll("details[data-view]").forEach(function (d) { open[d.getAttribute("data-view")] = d.open; });
        sections.innerHTML = html;
        sections.querySelectorAll("details[data-view]").forEach(function (d) {
          var v = d.getAttribute("data-view");
          if (open[v] !== undefined) { d.open = open[v]; }
        });
        fillLogs();
        followLogs();
        loadFleet();
        document.getElementById("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
      })
      .catch(function (e) { document.getElementById("refreshed").textContent = "not updated: " + e.message; })
      .then(function () { busy = false; });
  }

  function followLogs() {
    sections.querySelectorAll("pre.live-log").forEach(function (pre) {
      var id = pre.getAttribute("data-build-id");
      fetch("/dashboard/builds/" + id + "/log", {headers: headers(), cache: "no-store"})
        .then(function (r) {
          if (!r.ok) { return null; }
          var status = r.headers.get("X-Build-Status");
          return r.text().then(function (t) { return {text: t, status: status}; });
        })
        .then(function (res) {
          if (!res) { return; }
          logCache[id] = res.text || "(no output yet)";
          fillLogs();
          if (res.status !== "running") { refresh(); }
        })
        .catch(function () { /* next round */ });
    });
  }

  function renderJSON(value) {
    if (value === null || typeof value !== "object") {
      var span = document.createElement("span");
      span.textContent = value === null ? "-" : String(value);
      return span;
    }
    var table = document.createElement("table");
    table.className = "kv";
    Object.keys(value).forEach(function (k) {
      var tr = document.createElement("tr");
      var th = document.createElement("th");
      th.textContent = k;
      var td = document.createElement("td");
      td.appendChild(renderJSON(value[k]));
      tr.appendChild(th);
      tr.appendChild(td);
      table.appendChild(tr);
    });
    return table;
  }

  function loadFleet() {
    sections.querySelectorAll("details[data-view]").forEach(function (d) {
      var body = d.querySelector(".fleet-body");
      fetch("/api/v1/fleet/" + d.getAttribute("data-view"), {headers: headers(), cache: "no-store"})
        .then(function (r) { return r.json().then(function (j) { return {ok: r.ok, body: j}; }); })
        .then(function (res) {
          body.innerHTML = "";
          body.className = "fleet-body";
          if (!res.ok) { body.className = "fleet-body bad"; body.textContent = res.body.message || "unavailable"; return; }
          body.appendChild(renderJSON(res.body));
        })
        .catch(function () { body.className = "fleet-body bad"; body.textContent = "fleet state unavailable"; });
    });
  }

  sections.addEventListener("click", function (ev) {
    var btn = ev.target.closest("button[data-decision]");
    if (!btn) { return; }
    var id = btn.getAttribute("data-approval-id");
    var decision = btn.getAttribute("data-decision");
    if (!token()) {
      flash("Enter the API token above first: approving and rejecting need it.", true);
      document.getElementById("token").focus();
      return;
    }
    btn.disabled = true;
    fetch("/api/v1/approvals/" + id + "/" + decision, {
      method: "POST", headers: headers({"Content-Type": "application/json"}),
      body: JSON.stringify({by: "dashboard"})
    })
      .then(function (r) { return r.json().then(function (j) { return {ok: r.ok, body: j}; }); })
      .then(function (res) {
        if (res.ok) {
          flash("Approval #" + id + " " + res.body.status + ".", false);
        } else {
          flash("Approval #" + id + ": " + (res.body.message || res.body.error), true);
          btn.disabled = false;
        }
        return refresh();
      })
      .catch(function (e) { flash("Approval #" + id + ": " + e.message, true); btn.disabled = false; });
  });

  document.getElementById("token-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = document.getElementById("token");
    if (input.value) { sessionStorage.setItem(KEY, input.value); }
    input.value = "";
    showTokenState();
    refresh();
  });
  document.getElementById("token-forget").addEventListener("click", function () {
    sessionStorage.removeItem(KEY);
    showTokenState();
  });

  showTokenState();
  followLogs();
  loadFleet();
  if (sections.getAttribute("data-public-read") !== "true" && token()) { refresh(); }
  setInterval(refresh, 3000);
  setInterval(followLogs, 1000);
}());
