// The approval inbox and the runs view: sign in with a bearer token, list what waits for
// you and decide; find runs and follow a run's timeline. Views are chosen by the URL's hash
// (#/approvals, #/approvals/<id>, #/runs, #/runs/<id>). Plain DOM, no framework. Everything
// the API returns is written with textContent or setAttribute, never parsed as HTML.
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
    // The approval the URL names (#/approvals/<id>): shown and focused once it is listed.
    focus: null,
    rendered: false,
    runsCursor: null,
    // The run whose view is open: its id, events shown, where its timeline goes on.
    run: null,
  };
  const enc = encodeURIComponent;

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
    $("runs").hidden = view !== "runs";
    $("run").hidden = view !== "run";
    $("session").hidden = view === "login";
    $("nav").hidden = view === "login";
    for (const [id, views] of [["nav-approvals", ["inbox"]], ["nav-runs", ["runs", "run"]]]) {
      if (views.includes(view)) {
        $(id).setAttribute("aria-current", "page");
      } else {
        $(id).removeAttribute("aria-current");
      }
    }
    if (view === "login") {
      $("token").focus();
    }
  }

  // Which view the URL's hash asks for.
  function route() {
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      show("login");
      return;
    }
    closeRun();
    const hash = location.hash || "#/approvals";
    let name = "";
    try {
      name = decodeURIComponent(hash.replace(/^#\/(approvals|runs)\/?/, ""));
    } catch (err) {
      name = "";
    }
    if (hash.startsWith("#/runs/") && name) {
      openRun(name);
    } else if (hash.startsWith("#/runs")) {
      show("runs");
      loadRuns(false);
    } else {
      show("inbox");
      state.focus = hash.startsWith("#/approvals/") && name ? { id: name, renders: 0 } : null;
      if (state.focus && state.rendered) {
        focusApproval();
      }
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
    state.rendered = false;
    closeRun();
    $("runs-body").replaceChildren();
    $("timeline").replaceChildren();
    $("reviewer").textContent = "";
    $("tenants").textContent = "";
    announce("");
    show("login");
    showError(message || "");
  }

  function start() {
    state.session += 1;
    $("updated").textContent = "Loading…";
    route();
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
    state.rendered = true;
    if (state.focus) {
      focusApproval();
    }
  }

  // Bring the request the URL names into view; say so if it does not wait for this reviewer.
  function focusApproval() {
    const wanted = state.focus;
    const node = state.nodes.get(wanted.id);
    if (node) {
      state.focus = null;
      for (const other of state.nodes.values()) {
        other.classList.toggle("focused", other === node);
      }
      node.scrollIntoView({ block: "center" });
      field(node, "reason-input").focus();
      return;
    }
    wanted.renders += 1;
    // Asked of every coordinator, a request just opened may take a list or two to show.
    if (wanted.renders >= 3) {
      state.focus = null;
      announce("Request " + wanted.id + " is not waiting for you: decided, escalated, timed out, or not yours to decide.");
    }
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
    for (const name of ["args", "output"]) {
      const box = field(node, name + "-input");
      box.id = "approval-" + name + "-" + n;
      field(node, name + "-label").setAttribute("for", box.id);
    }
    field(node, "decide").setAttribute("aria-labelledby", title.id);
    for (const verdict of ["approve", "reject", "edit", "respond"]) {
      field(node, verdict).addEventListener("click", () => decide(node, verdict));
    }
    return node;
  }

  function fill(node, item) {
    state.items.set(node, item);
    field(node, "workflow").textContent = item.workflow;
    field(node, "step").textContent = item.step;
    field(node, "reason").textContent = item.reason;
    field(node, "tenant").textContent = item.tenant;
    field(node, "run_id").textContent = item.run_id;
    field(node, "run-link").setAttribute("href", "#/runs/" + enc(item.run_id));
    field(node, "cost").textContent = money(item.cost_usd);
    const deadline = new Date(item.deadline);
    const time = field(node, "deadline");
    time.setAttribute("datetime", item.deadline);
    time.textContent = deadline.toLocaleString();
    field(node, "left").textContent = "(" + timeLeft(deadline) + ")";
    field(node, "level").textContent =
      item.level === 0 ? "first ask" : "escalated " + item.level + (item.level === 1 ? " time" : " times");
    // An edit or a response counts as its reviewer's approval of what they proposed.
    const approvals = item.votes.filter((vote) => ["approve", "edit", "respond"].includes(vote.verdict));
    const names = approvals.map((vote) => vote.approver + (vote.reason ? " (“" + vote.reason + "”)" : ""));
    field(node, "votes").textContent =
      approvals.length + " of " + item.quorum + " approvals" + (names.length ? ": " + names.join(", ") : "");
    field(node, "approvers").textContent = item.approvers.join(", ");
    const context = JSON.stringify(item.context, null, 2);
    const pre = field(node, "context");
    if (pre.textContent !== context) {
      pre.textContent = context;
    }
    // The call an edit changes; the reviewer's draft survives the page's polls.
    const action = item.action && typeof item.action === "object" ? item.action : null;
    field(node, "edit-box").hidden = !action;
    if (action) {
      const args = JSON.stringify(action.args, null, 2);
      field(node, "tool").textContent = action.tool;
      if (node.dataset.argsShown !== args) {
        node.dataset.argsShown = args;
        field(node, "args-input").value = args;
      }
    }
    field(node, "response-box").hidden = item.response == null;
    field(node, "response").textContent = item.response == null ? "" : item.response;
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
    for (const name of ["approve", "reject", "reason-input", "edit", "args-input", "respond", "output-input"]) {
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
    // Names the request as this page showed it: a different one is refused (409).
    const body = { verdict, request_digest: item.request_digest };
    if (reason) {
      body.reason = reason;
    }
    if (verdict === "edit" || verdict === "respond") {
      const name = verdict === "edit" ? "args" : "output";
      const box = field(node, name + "-input");
      try {
        body[name] = JSON.parse(box.value);
      } catch (err) {
        itemError(node, (verdict === "edit" ? "The arguments are" : "The output is") + " not JSON: " + err.message);
        box.focus();
        return;
      }
      if (verdict === "edit" && (body.args === null || typeof body.args !== "object" || Array.isArray(body.args))) {
        itemError(node, "The arguments must be a JSON object.");
        box.focus();
        return;
      }
    }
    const session = state.session;
    const what = item.workflow + " · " + item.step + " (run " + item.run_id + ")";
    const done = { approve: "Approved ", reject: "Rejected ", edit: "Approved with your arguments ", respond: "Answered " };
    busy(node, true);
    try {
      const path = "/v1/approvals/" + encodeURIComponent(item.approval_id) + "/decision";
      const answer = await api("POST", path, body);
      if (session !== state.session) {
        return;
      }
      state.decided.add(item.approval_id);
      drop(item.approval_id);
      announce(done[verdict] + what + " as " + answer.approver + ".");
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
      } else if (err.status === 422) {
        itemError(node, "Not sent, the server says: " + err.message);
      } else {
        itemError(node, "The decision was not sent: " + err.message);
      }
    }
  }

  // -- runs ----------------------------------------------------------------------------------

  function failed(err, what) {
    if (err.status === 401) {
      signOut("Your token was not accepted (" + err.message + "). Sign in again.");
    } else {
      showError("Could not load " + what + ": " + err.message);
    }
  }

  async function loadRuns(more) {
    const session = state.session;
    const form = $("runs-filter");
    const params = new URLSearchParams();
    for (const name of ["q", "status", "workflow", "tenant"]) {
      const value = form.elements[name].value.trim();
      if (value) {
        params.set(name, value);
      }
    }
    const since = Number(form.elements.since.value);
    if (since) {
      params.set("since", new Date(Date.now() - since * 1000).toISOString());
    }
    params.set("limit", "50");
    if (more && state.runsCursor) {
      params.set("cursor", state.runsCursor);
    }
    let data;
    try {
      data = await api("GET", "/v1/runs?" + params.toString());
    } catch (err) {
      if (session === state.session) {
        failed(err, "the runs");
      }
      return;
    }
    if (session !== state.session) {
      return;
    }
    showError("");
    const body = $("runs-body");
    if (!more) {
      body.replaceChildren();
    }
    for (const run of data.runs) {
      body.appendChild(runRow(run));
    }
    state.runsCursor = data.cursor || null;
    $("runs-more").hidden = !state.runsCursor;
    $("runs-empty").hidden = body.children.length > 0;
    const partial = $("runs-partial");
    const missing = (data.partial || []).map(describeMissing);
    partial.textContent = missing.length ? "This list may be incomplete. " + missing.join("; ") : "";
    partial.hidden = missing.length === 0;
  }

  function describeMissing(part) {
    return part.worker ? part.worker + " " + part.error : "partitions " + (part.partitions || []).join(", ") + ": " + part.error;
  }

  function runRow(run) {
    const row = $("run-row-template").content.firstElementChild.cloneNode(true);
    row.setAttribute("data-run-id", run.run_id);
    const link = field(row, "link");
    link.textContent = run.run_id;
    link.setAttribute("href", "#/runs/" + enc(run.run_id));
    field(row, "status").textContent = run.status;
    field(row, "status").className = "status-" + run.status;
    field(row, "workflow").textContent = run.workflow;
    field(row, "tenant").textContent = run.tenant;
    const started = field(row, "started");
    started.setAttribute("datetime", run.started_at);
    started.textContent = new Date(run.started_at).toLocaleString();
    field(row, "tokens").textContent = String(run.tokens);
    field(row, "cost").textContent = money(run.cost_usd);
    field(row, "waiting").textContent = run.waiting_for.length ? "decision " + run.waiting_for.join(", ") : "";
    return row;
  }

  function closeRun() {
    if (state.run) {
      clearTimeout(state.run.timer);
      state.run = null;
    }
  }

  function openRun(runId) {
    show("run");
    state.run = { id: runId, cursor: null, seen: new Set(), timer: null, endedPolls: 0 };
    $("run-id").textContent = runId;
    for (const id of ["run-status", "run-workflow", "run-tenant", "run-started", "run-finished", "run-tokens", "run-cost", "timeline-state"]) {
      $(id).textContent = "";
    }
    $("run-reason").hidden = true;
    $("run-waiting").hidden = true;
    $("run-summarized").hidden = true;
    $("run-steps").replaceChildren();
    $("timeline").replaceChildren();
    $("run-title").focus();
    pollRun(state.run, state.session);
  }

  async function pollRun(view, session) {
    const stale = () => view !== state.run || session !== state.session;
    const path = "/v1/runs/" + enc(view.id);
    let run;
    let page;
    try {
      run = await api("GET", path);
      page = await api("GET", path + "/events" + (view.cursor ? "?cursor=" + enc(view.cursor) : ""));
    } catch (err) {
      if (stale()) {
        return;
      }
      failed(err, "run " + view.id);
      if (err.status !== 401 && err.status !== 403 && err.status !== 404) {
        view.timer = setTimeout(() => pollRun(view, session), POLL_MS);
      }
      return;
    }
    if (stale()) {
      return;
    }
    showError("");
    fillRun(run);
    for (const event of page.events) {
      if (!view.seen.has(event.seq)) {
        view.seen.add(event.seq);
        $("timeline").appendChild(eventItem(event));
      }
    }
    view.cursor = page.cursor;
    const ended = page.status !== "running";
    let complete = ended;
    for (let seq = 0; complete && seq < page.seq; seq++) {
      complete = view.seen.has(seq);
    }
    // A run's last events are readable a moment after its state says it ended.
    view.endedPolls += ended ? 1 : 0;
    if (complete || (ended && !page.more && view.endedPolls > 3)) {
      $("timeline-state").textContent = "(ended " + page.status + ")";
      return;
    }
    $("timeline-state").textContent = "(live)";
    view.timer = setTimeout(() => pollRun(view, session), page.more ? 0 : POLL_MS);
  }

  function fillRun(run) {
    const usage = run.usage || {};
    $("run-status").textContent = run.status;
    $("run-status").className = "status-" + run.status;
    $("run-workflow").textContent = run.workflow;
    $("run-tenant").textContent = run.tenant;
    $("run-started").textContent = new Date(run.started_at).toLocaleString();
    $("run-finished").textContent = run.finished_at ? new Date(run.finished_at).toLocaleString() : "–";
    $("run-tokens").textContent = String((usage.input_tokens || 0) + (usage.output_tokens || 0));
    $("run-cost").textContent = money(usage.cost_usd || 0);
    $("run-reason").textContent = run.reason || "";
    $("run-reason").hidden = !run.reason;
    const open = run.status === "running" ? run.steps.filter((step) => step.approval) : [];
    const list = $("run-approvals");
    list.replaceChildren(...open.map(approvalItem));
    $("run-waiting").hidden = open.length === 0;
    const rows = run.steps.map((step) => {
      const row = document.createElement("tr");
      const stepUsage = step.usage || {};
      const cells = [
        step.step,
        step.phase,
        String(step.attempt || 0),
        step.duration_ms !== null && step.duration_ms !== undefined ? Math.round(step.duration_ms) + " ms" : "–",
        String((stepUsage.input_tokens || 0) + (stepUsage.output_tokens || 0)),
        money(stepUsage.cost_usd || 0),
      ];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      return row;
    });
    $("run-steps").replaceChildren(...rows);
    $("run-summarized").hidden = rows.length > 0 || run.status === "running";
  }

  function approvalItem(step) {
    const approval = step.approval;
    const item = document.createElement("li");
    item.setAttribute("data-testid", "run-approval");
    const text = document.createElement("span");
    text.textContent =
      step.step + ": " + (approval.reason || "approval") + " · " + approval.approval_id +
      " · who may decide: " + approval.approvers.join(", ") +
      " · deadline " + new Date(approval.deadline).toLocaleString() + " ";
    const link = document.createElement("a");
    link.textContent = "Decide in the inbox";
    link.setAttribute("href", "#/approvals/" + enc(approval.approval_id));
    link.setAttribute("data-testid", "run-approval-link");
    item.append(text, link);
    return item;
  }

  // Fields every event has, shown in their own places (the audit chain's link, prev_hash,
  // is for `baton audit verify`, not for reading); any other field (an event type this page
  // does not know may bring some) is shown with the detail.
  const SHOWN = new Set(["run_id", "seq", "type", "at", "workflow", "tenant", "step", "attempt", "duration_ms", "usage", "total_cost_usd", "total_tokens", "detail", "prev_hash"]);

  function eventItem(event) {
    const item = $("event-template").content.firstElementChild.cloneNode(true);
    item.setAttribute("data-type", event.type);
    const at = field(item, "at");
    at.setAttribute("datetime", event.at);
    at.textContent = new Date(event.at).toLocaleTimeString();
    field(item, "seq").textContent = "#" + event.seq;
    field(item, "type").textContent = event.type;
    const what = [];
    if (event.step) {
      what.push(event.step);
    }
    if (event.attempt !== null && event.attempt !== undefined) {
      what.push("attempt " + event.attempt);
    }
    if (event.duration_ms !== null && event.duration_ms !== undefined) {
      what.push(Math.round(event.duration_ms) + " ms");
    }
    const usage = event.usage || {};
    const tokens = (usage.input_tokens || 0) + (usage.output_tokens || 0);
    if (tokens || Number(usage.cost_usd || 0)) {
      what.push(tokens + " tokens, " + money(usage.cost_usd || 0));
    }
    what.push("run so far: " + (event.total_tokens || 0) + " tokens, " + money(event.total_cost_usd || 0));
    field(item, "what").textContent = what.join(" · ");
    const rest = {};
    for (const [name, value] of Object.entries(event)) {
      if (!SHOWN.has(name) && value !== null && value !== undefined) {
        rest[name] = value;
      }
    }
    const detail = event.detail;
    const hasDetail = detail !== null && detail !== undefined && !(typeof detail === "object" && Object.keys(detail).length === 0);
    const shown = Object.keys(rest).length ? Object.assign(hasDetail ? { detail } : {}, rest) : hasDetail ? detail : null;
    const fields = field(item, "fields");
    fields.textContent = shown === null ? "" : JSON.stringify(shown);
    fields.hidden = shown === null;
    return item;
  }

  // -- start ---------------------------------------------------------------------------------

  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(""));
  $("runs-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    loadRuns(false);
  });
  $("runs-more").addEventListener("click", () => loadRuns(true));
  window.addEventListener("hashchange", route);
  if (sessionStorage.getItem(TOKEN_KEY)) {
    start();
  } else {
    show("login");
  }
})();
