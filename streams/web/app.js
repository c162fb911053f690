// The approval inbox: sign in with a bearer token, list what waits for you, decide.
// Plain DOM, no framework. Everything the API returns is written with textContent or
// setAttribute, never parsed as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "baton.token";
  const POLL_MS = 2000;
  const $ = (id) => document.getElementById(id);

  const state = {
    timer: null,
    // Bumped on every sign-in and sign-out: answers to an older session are dropped.
    session: 0,
    // Decided here; hidden until the server stops listing them (the coordinator has counted).
    decided: new Set(),
    nodes: new Map(),
    items: new WeakMap(),
    made: 0,
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = {
      Accept: "application/json",
      Authorization: "Bearer " + (sessionStorage.getItem(TOKEN_KEY) || ""),
    };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "the server did not answer (is the worker running?)");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error : "HTTP " + response.status;
      throw new ApiError(response.status, message);
    }
    return data;
  }

  // -- views ---------------------------------------------------------------------------------

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  function announce(message) {
    $("notice").textContent = message;
  }

  function show(view) {
    $("login").hidden = view !== "login";
    $("inbox").hidden = view !== "inbox";
    $("session").hidden = view !== "inbox";
    if (view === "login") {
      $("token").focus();
    }
  }

  // -- session -------------------------------------------------------------------------------

  function signIn(event) {
    event.preventDefault();
    const input = $("token");
    const value = input.value.trim();
    if (!value) {
      showError("Enter your reviewer token.");
      input.focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    input.value = "";
    showError("");
    start();
  }

  function signOut(message) {
    state.session += 1;
    clearTimeout(state.timer);
    sessionStorage.removeItem(TOKEN_KEY);
    for (const node of state.nodes.values()) {
      node.remove();
    }
    state.nodes.clear();
    state.decided.clear();
    $("reviewer").textContent = "";
    $("tenants").textContent = "";
    announce("");
    show("login");
    showError(message || "");
  }

  function start() {
    state.session += 1;
    show("inbox");
    $("updated").textContent = "Loading…";
    refresh(state.session);
  }

  async function refresh(session) {
    clearTimeout(state.timer);
    let data;
    try {
      data = await api("GET", "/v1/approvals");
    } catch (err) {
      if (session !== state.session) {
        return;
      }
      if (err.status === 401) {
        signOut("Your token was not accepted (" + err.message + "). Sign in again.");
        return;
      }
      showError("Could not load the approvals: " + err.message);
      state.timer = setTimeout(() => refresh(session), POLL_MS);
      return;
    }
    if (session !== state.session) {
      return;
    }
    showError("");
    render(data);
    state.timer = setTimeout(() => refresh(session), POLL_MS);
  }

  // -- the list ------------------------------------------------------------------------------

  function render(data) {
    $("reviewer").textContent = "Signed in as " + data.reviewer;
    const tenants = (data.tenants || []).map((t) => (t === "*" ? "every tenant" : t));
    $("tenants").textContent = tenants.length ? "for " + tenants.join(", ") : "";
    const listed = new Set(data.approvals.map((item) => item.approval_id));
    for (const id of state.decided) {
      if (!listed.has(id)) {
        state.decided.delete(id);
      }
    }
    const items = data.approvals.filter((item) => !state.decided.has(item.approval_id));
    const keep = new Set(items.map((item) => item.approval_id));
    for (const [id, node] of state.nodes) {
      if (!keep.has(id)) {
        drop(id);
      }
    }
    const list = $("approvals");
    items.forEach((item, index) => {
      let node = state.nodes.get(item.approval_id);
      if (!node) {
        node = build(item);
        state.nodes.set(item.approval_id, node);
      }
      fill(node, item);
      if (list.children[index] !== node) {
        list.insertBefore(node, list.children[index] || null);
      }
    });
    $("count").textContent = "(" + items.length + ")";
    $("empty").hidden = items.length > 0;
    const partial = $("partial");
    const missing = (data.partial || []).map((part) =>
      part.worker ? part.worker + " " + part.error : "partitions " + (part.partitions || []).join(", ") + ": " + part.error
    );
    partial.textContent = missing.length ? "This list may be incomplete. " + missing.join("; ") : "";
    partial.hidden = missing.length === 0;
    $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
  }

  function field(node, name) {
    return node.querySelector('[data-field="' + name + '"]');
  }

  function build(item) {
    const node = $("approval-template").content.firstElementChild.cloneNode(true);
    const n = ++state.made;
    node.setAttribute("data-approval-id", item.approval_id);
    const title = field(node, "title");
    title.id = "approval-title-" + n;
    node.querySelector("article").setAttribute("aria-labelledby", title.id);
    const input = field(node, "reason-input");
    input.id = "approval-reason-" + n;
    field(node, "reason-label").setAttribute("for", input.id);
    field(node, "decide").setAttribute("aria-labelledby", title.id);
    field(node, "approve").addEventListener("click", () => decide(node, "approve"));
    field(node, "reject").addEventListener("click", () => decide(node, "reject"));
    return node;
  }

  function fill(node, item) {
    state.items.set(node, item);
    field(node, "workflow").textContent = item.workflow;
    field(node, "step").textContent = item.step;
    field(node, "reason").textContent = item.reason;
    field(node, "tenant").textContent = item.tenant;
    field(node, "run_id").textContent = item.run_id;
    field(node, "cost").textContent = money(item.cost_usd);
    const deadline = new Date(item.deadline);
    const time = field(node, "deadline");
    time.setAttribute("datetime", item.deadline);
    time.textContent = deadline.toLocaleString();
    field(node, "left").textContent = "(" + timeLeft(deadline) + ")";
    field(node, "level").textContent =
      item.level === 0 ? "first ask" : "escalated " + item.level + (item.level === 1 ? " time" : " times");
    const approvals = item.votes.filter((vote) => vote.verdict === "approve");
    const names = approvals.map((vote) => vote.approver + (vote.reason ? " (“" + vote.reason + "”)" : ""));
    field(node, "votes").textContent =
      approvals.length + " of " + item.quorum + " approvals" + (names.length ? ": " + names.join(", ") : "");
    field(node, "approvers").textContent = item.approvers.join(", ");
    const context = JSON.stringify(item.context, null, 2);
    const pre = field(node, "context");
    if (pre.textContent !== context) {
      pre.textContent = context;
    }
  }

  function money(value) {
    const amount = Number(value);
    if (!Number.isFinite(amount)) {
      return String(value);
    }
    // Under a cent, as many digits as it takes (up to six), like the CLI: $0.0055, not $0.01.
    return "$" + (amount !== 0 && amount < 0.01 ? String(Number(amount.toFixed(6))) : amount.toFixed(2));
  }

  function timeLeft(deadline) {
    let seconds = Math.round((deadline.getTime() - Date.now()) / 1000);
    if (seconds <= 0) {
      return "due now";
    }
    const parts = [];
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
      if (seconds >= size || (unit === "s" && parts.length === 0)) {
        parts.push(Math.floor(seconds / size) + unit);
        seconds %= size;
      }
      if (parts.length === 2) {
        break;
      }
    }
    return parts.join(" ") + " left";
  }

  function drop(id) {
    const node = state.nodes.get(id);
    if (!node) {
      return;
    }
    const hadFocus = node.contains(document.activeElement);
    const next = node.nextElementSibling || node.previousElementSibling;
    node.remove();
    state.nodes.delete(id);
    if (hadFocus) {
      (next ? field(next, "reason-input") : $("inbox-title")).focus();
    }
  }

  // -- deciding ------------------------------------------------------------------------------

  function itemError(node, message) {
    const box = field(node, "item-error");
    box.textContent = message;
    box.hidden = !message;
  }

  function busy(node, value) {
    for (const name of ["approve", "reject", "reason-input"]) {
      field(node, name).disabled = value;
    }
    node.setAttribute("aria-busy", value ? "true" : "false");
  }

  async function decide(node, verdict) {
    const item = state.items.get(node);
    const input = field(node, "reason-input");
    const reason = input.value.trim();
    itemError(node, "");
    if (verdict === "reject" && !reason) {
      itemError(node, "Give a reason to reject.");
      input.focus();
      return;
    }
    const session = state.session;
    const what = item.workflow + " · " + item.step + " (run " + item.run_id + ")";
    busy(node, true);
    try {
      // Names the request as this page showed it: a different one is refused (409).
      const body = { verdict, request_digest: item.request_digest };
      if (reason) {
        body.reason = reason;
      }
      const path = "/v1/approvals/" + encodeURIComponent(item.approval_id) + "/decision";
      const answer = await api("POST", path, body);
      if (session !== state.session) {
        return;
      }
      state.decided.add(item.approval_id);
      drop(item.approval_id);
      announce((verdict === "approve" ? "Approved " : "Rejected ") + what + " as " + answer.approver + ".");
    } catch (err) {
      if (session !== state.session) {
        return;
      }
      busy(node, false);
      if (err.status === 401) {
        signOut("Your token was not accepted (" + err.message + "). Sign in again.");
      } else if (err.status === 409 || err.status === 404) {
        state.decided.add(item.approval_id);
        drop(item.approval_id);
        announce(
          err.status === 409
            ? "You have decided " + what + " already."
            : "No longer open: " + what + " (decided, escalated or timed out)."
        );
      } else if (err.status === 403) {
        itemError(node, "You may not decide this request: " + err.message);
      } else if (err.status === 503) {
        itemError(node, "The server cannot take decisions right now: " + err.message);
      } else {
        itemError(node, "The decision was not sent: " + err.message);
      }
    }
  }

  // -- start ---------------------------------------------------------------------------------

  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(""));
  if (sessionStorage.getItem(TOKEN_KEY)) {
    start();
  } else {
    show("login");
  }
})();
