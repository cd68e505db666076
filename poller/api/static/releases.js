// The release board's actions: every button POSTs with the token entered once (sessionStorage,
// shared with the dashboard). A rollback asks the server first (dry run), shows what it will
// do, and runs only on a second click.
(function () {
  "use strict";
  var KEY = "slipway.token";
  function token() { return sessionStorage.getItem(KEY) || ""; }
  function flash(text, bad) {
    var el = document.getElementById("flash");
    el.hidden = false; el.textContent = text; el.className = bad ? "bad" : "ok";
  }
  function post(url, body) {
    var h = {"Content-Type": "application/json"};
    if (token()) { h["Authorization"] = "Bearer " + token(); }
    return fetch(url, {method: "POST", headers: h, body: JSON.stringify(body || {})})
      .then(function (r) { return r.json().then(function (j) { return {ok: r.ok, body: j}; }); });
  }
  function needToken() {
    if (token()) { return false; }
    flash("Enter the API token above first: actions need it.", true);
    document.getElementById("token").focus();
    return true;
  }
  document.getElementById("releases").addEventListener("click", function (ev) {
    var btn = ev.target.closest("button");
    if (!btn || needToken()) { return; }
    var url = btn.getAttribute("data-action");
    if (url) {
      btn.disabled = true;
      post(url, JSON.parse(btn.getAttribute("data-body") || '{"by": "release board"}')).then(function (res) {
        if (!res.ok) { flash(res.body.message || res.body.error, true); btn.disabled = false; return; }
        window.location.reload();
      });
      return;
    }
    var env = btn.getAttribute("data-rollback");
    if (!env) { return; }
    var service = btn.getAttribute("data-service");
    var body = {env: env, by: "release board"};
    if (env === "production") {
      body.to = document.querySelector("input[data-rollback-to='" + service + "']").value;
    }
    var confirmed = btn.getAttribute("data-confirm") === "yes";
    body.dry_run = !confirmed;
    btn.disabled = true;
    post("/api/v1/rollbacks/" + encodeURIComponent(service), body).then(function (res) {
      btn.disabled = false;
      if (!res.ok) { flash(res.body.message || res.body.error, true); return; }
      if (!confirmed) {
        flash("Will: " + res.body.steps.join("; ") + ". Click again to do it.", false);
        btn.setAttribute("data-confirm", "yes");
        btn.textContent = "Confirm " + env + " rollback";
        return;
      }
      flash("Done: " + res.body.steps.join("; "), false);
      setTimeout(function () { window.location.reload(); }, 800);
    });
  });
  // api.public_read off: the page came as a shell; load the board with the token.
  function loadWithToken() {
    if (!document.getElementById("needs-token") || !token()) { return; }
    fetch(window.location.pathname, {headers: {"Authorization": "Bearer " + token()}, cache: "no-store"})
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var board = doc.getElementById("releases");
        if (board && !doc.getElementById("needs-token")) {
          document.getElementById("releases").innerHTML = board.innerHTML;
        } else {
          flash("The API token was not accepted.", true);
        }
      });
  }
  document.getElementById("token-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = document.getElementById("token");
    if (input.value) { sessionStorage.setItem(KEY, input.value); }
    input.value = "";
    document.getElementById("token-state").textContent = token() ? "token set for this tab" : "";
    loadWithToken();
  });
  document.getElementById("token-state").textContent = token() ? "token set for this tab" : "";
  loadWithToken();
}());
