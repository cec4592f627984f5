"""The live view: a read-only HTML page of a running federation, served by the API.

``GET /view`` returns one constant document (HTML, CSS and JavaScript, all
inline, nothing loaded from elsewhere). It carries no federation data: the
script fetches ``/v1/status``, ``/v1/audit-log`` and the pending requests
(``/v1/unlearning-requests/{id}``) with ``Authorization: Bearer <token>``,
exactly as any other client, and redraws every :data:`POLL_INTERVAL_MS`: the
round, the clients (training, forgotten, excluded), pending requests and those
that settled while the page was open (rejected ones with their reason), the
audit log and the test-score curve (one point per server-side evaluation,
unlearning steps marked).

Why the page itself is served without the token: a browser cannot send a
bearer header when it first loads a page, and the document is the same for
everyone, so it reveals nothing a 401 does not (that a fedforget API listens
here). Every byte of federation data stays behind the token, with the same
constant-time check as before. The token reaches the page in one of two ways:

* pasted into the page's form (the recommended way);
* in the URL fragment, ``/view#token=<token>`` (scripts, headless browsers).
  A fragment is never sent to the server, so it lands neither in access
  logs nor in proxies nor in ``Referer`` headers; the script removes it
  from the address bar and the history entry at once. It does stay in a
  shell history or a process list if typed on a command line.

It is then kept in ``sessionStorage`` (this tab only, gone when the tab
closes) and sent only in the ``Authorization`` header of same-origin
``fetch`` calls. A query parameter (``?token=``) was ruled out: it would be
written to access logs and sent in ``Referer`` headers; a cookie too: it
would be sent automatically, which opens the API to cross-site request
forgery.

Output is escaped by construction: the script builds the page with
``textContent`` and ``createElement`` only, never ``innerHTML``. The
``Content-Security-Policy`` (:data:`PAGE_HEADERS`) is the second line of
defence: only this page's own script and style (by SHA-256 hash), ``fetch``
to this origin only, no frames, forms or base URL, and Trusted Types
enforced, so an HTML-parsing sink would throw even if one were added.
"""

from __future__ import annotations

import base64
import hashlib
import json

from fedforget.api.constants import API_PREFIX

VIEW_PATH = "/view"
"""Where the API serves the page (the only path answered without the token)."""
POLL_INTERVAL_MS = 3000
"""How often the page reads the API again."""
TOKEN_STORAGE_KEY = "fedforget-api-token"
"""The ``sessionStorage`` key the page keeps the token under."""

_STYLE = """
:root { color-scheme: light; --ink: #1d2430; --muted: #5b6575; --line: #d8dde5;
  --train: #1f7a4d; --forgot: #b42318; --excl: #6b7280; --accent: #2456a6; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--ink); background: #f4f6f9; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 8px 24px;
  padding: 14px 24px; background: #fff; border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0; }
h2 { font-size: 15px; margin: 0 0 8px; }
.meta { color: var(--muted); }
.big { font-size: 16px; font-weight: 600; color: var(--ink); }
#connection.error { color: var(--forgot); font-weight: 600; }
#forget-token { margin-left: auto; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr));
  gap: 16px; padding: 16px 24px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px;
  min-width: 0; }
.wide { grid-column: 1 / -1; }
#token-form { max-width: 640px; margin: 24px auto; background: #fff; padding: 16px 20px;
  border: 1px solid var(--line); border-radius: 8px; }
#token-form input { width: 100%; padding: 6px 8px; margin: 6px 0; font: inherit; }
#token-message { color: var(--forgot); }
.hint { color: var(--muted); font-size: 13px; }
.clients { display: grid; grid-template-columns: 110px 1fr; gap: 6px 12px; align-items: start; }
.clients ul { display: flex; flex-wrap: wrap; gap: 6px; list-style: none; margin: 0; padding: 0; }
.clients li { padding: 1px 0; color: var(--muted); overflow-wrap: anywhere; }
.clients li.chip { padding: 1px 9px; border-radius: 10px; color: #fff; }
#clients-training .chip { background: var(--train); }
#clients-forgotten .chip { background: var(--forgot); }
#clients-excluded .chip { background: var(--excl); }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px 4px 0; border-bottom: 1px solid var(--line);
  vertical-align: top; overflow-wrap: anywhere; }
th { color: var(--muted); font-weight: 600; }
td.empty { color: var(--muted); }
tr.queued td.status { color: var(--accent); font-weight: 600; }
tr.applied td.status { color: var(--train); font-weight: 600; }
tr.rejected td.status { color: var(--forgot); font-weight: 600; }
code, .id { font-family: ui-monospace, monospace; font-size: 12px; }
#curve svg { width: 100%; height: auto; display: block; }
#curve .grid { stroke: var(--line); }
#curve .axis-label { fill: var(--muted); font-size: 11px; }
#curve .line { fill: none; stroke: var(--accent); stroke-width: 2; }
#curve .point { fill: var(--accent); }
#curve .step { stroke: var(--forgot); stroke-dasharray: 4 3; }
#curve .step-label { fill: var(--forgot); font-size: 11px; }
#curve .note { fill: var(--muted); font-size: 13px; }
"""

_SCRIPT = """
"use strict";
const API = __API_PREFIX__;
const POLL_MS = __POLL_MS__;
const TOKEN_KEY = __TOKEN_KEY__;
const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_DETAILS = 20;
const MAX_WATCHED = 50;
const STATUSES = ["queued", "applied", "rejected"];
const state = { token: "", timer: 0, watched: new Map() };

class Refused extends Error {}

const byId = (id) => document.getElementById(id);

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function setText(id, text) { byId(id).textContent = String(text); }

function utc(seconds) {
  if (!seconds) return "";
  return new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC";
}

function size(bytes) {
  if (bytes < 1024) return bytes + " B";
  if (bytes < 1048576) return (bytes / 1024).toFixed(1) + " KiB";
  return (bytes / 1048576).toFixed(1) + " MiB";
}

function options(values) {
  const pairs = Object.entries(values || {}).map(([key, value]) => key + "=" + value);
  return pairs.length ? pairs.join(", ") : "run's settings";
}

// --------------------------------------------------------------- the token
function takeToken() {
  if (location.hash.startsWith("#token=")) {
    let token = location.hash.slice("#token=".length);
    try { token = decodeURIComponent(token); } catch (error) { /* not encoded: as it is */ }
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    // out of the address bar and this history entry before anything is fetched
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function askForToken(message) {
  clearTimeout(state.timer);
  state.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  setText("token-message", message);
  byId("token-form").hidden = false;
  byId("federation").hidden = true;
  byId("forget-token").hidden = true;
  setText("connection", "no token");
  byId("token-input").focus();
}

function useToken(token) {
  state.token = token;
  byId("token-form").hidden = true;
  byId("federation").hidden = false;
  byId("forget-token").hidden = false;
  poll();
}

// ---------------------------------------------------------------- reading
async function getJson(path) {
  let response;
  try {
    response = await fetch(API + path, {
      headers: { "Authorization": "Bearer " + state.token, "Accept": "application/json" },
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch (error) {
    throw new Error("the API at " + location.host + " does not answer (has the run ended?)");
  }
  if (response.status === 401) throw new Refused("the API refused this token");
  if (!response.ok) throw new Error("GET " + API + path + " answered " + response.status);
  return response.json();
}

async function requestDetails(pending) {
  const due = pending.slice(0, MAX_DETAILS);
  for (const [id, request] of state.watched) {
    if (request.status === "queued" && !pending.includes(id)) due.push(id);
  }
  const records = await Promise.all(
    due.map((id) => getJson("/unlearning-requests/" + encodeURIComponent(id)))
  );
  for (const record of records) state.watched.set(record.request_id, record);
  while (state.watched.size > MAX_WATCHED) {
    state.watched.delete(state.watched.keys().next().value);
  }
  return [...state.watched.values()];
}

async function poll() {
  clearTimeout(state.timer);
  if (!state.token) return;
  try {
    const [status, audit] = await Promise.all([getJson("/status"), getJson("/audit-log")]);
    const requests = await requestDetails(status.pending_requests);
    render(status, audit.entries, requests);
    byId("connection").className = "meta";
    setText("connection", "updated " + utc(Date.now() / 1000));
  } catch (error) {
    if (error instanceof Refused) {
      askForToken("The API refused this token: paste the current one.");
      return;
    }
    byId("connection").className = "meta error";
    setText("connection", error.message + "; trying again every " + POLL_MS / 1000 + " s");
  }
  state.timer = setTimeout(poll, POLL_MS);
}

// -------------------------------------------------------------- rendering
function render(status, entries, requests) {
  byId("federation").setAttribute("data-round", status.current_round);
  setText("round", status.current_round + " / " + status.num_server_rounds);
  setText("method", status.method);
  setText("methods-kept", status.methods_kept.join(", ") || "none");
  setText("storage", status.server_storage.clients + " clients, " +
    size(status.server_storage.bytes));
  renderClients(status);
  renderRequests(status.pending_requests, requests);
  renderAudit(entries);
  drawCurve(status.test_metric, status.test_scores, entries, status.current_round);
}

function clientList(id, clients) {
  const items = clients.map((client) => el("li", "chip", client));
  byId(id).replaceChildren(...(items.length ? items : [el("li", "none", "none")]));
}

function renderClients(status) {
  const forgotten = new Set(status.clients_forgotten);
  const excluded = new Set(status.clients_excluded);
  const training = status.clients_seen.filter((c) => !forgotten.has(c) && !excluded.has(c));
  clientList("clients-training", training);
  clientList("clients-forgotten", status.clients_forgotten);
  clientList("clients-excluded", status.clients_excluded);
}

function row(cells, className) {
  const tr = el("tr", className);
  for (const [cell, cellClass] of cells) tr.append(el("td", cellClass || "", cell));
  return tr;
}

function emptyRow(columns, text) {
  const td = el("td", "empty", text);
  td.colSpan = columns;
  return el("tr", "", td);
}

function renderRequests(pending, requests) {
  const rows = requests.map((r) => {
    const outcome = r.status === "applied" ? "round " + r.applied_round
      : r.status === "rejected" ? r.reason : "next round boundary";
    return row([
      [r.request_id, "id"], [r.status, "status"], [r.client_ids.join(", ")],
      [r.method || "run's method"], [options(r.options)],
      [r.submitted_round === null ? "" : r.submitted_round], [outcome, "outcome"],
    ], STATUSES.includes(r.status) ? r.status : "");
  });
  byId("requests-body").replaceChildren(
    ...(rows.length ? rows : [emptyRow(7, "No request is pending.")])
  );
  const more = pending.length - Math.min(pending.length, MAX_DETAILS);
  setText("pending-count", pending.length + " pending" + (more ? " (" + more + " not shown)" : ""));
}

function renderAudit(entries) {
  const rows = entries.map((e) => row([
    [e.server_round], [e.request_id, "id"], [e.method || "run's method"],
    [e.client_ids.join(", ")], [e.update_norm.toFixed(4)], [utc(e.applied_at)],
  ], "applied"));
  byId("audit-body").replaceChildren(
    ...(rows.length ? rows : [emptyRow(6, "Nothing has been unlearned yet.")])
  );
}

function drawCurve(metric, scores, entries, currentRound) {
  const W = 720, H = 260, L = 46, R = 14, T = 14, B = 34;
  const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img",
    "aria-label": "test " + metric + " after each round" });
  const last = Math.max(1, currentRound, ...scores.map((s) => s.server_round));
  const x = (round) => L + (W - L - R) * round / last;
  const y = (value) => T + (H - T - B) * (1 - Math.min(1, Math.max(0, value)));
  for (const value of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(value), y2: y(value) }));
    chart.append(svg("text", { class: "axis-label", x: L - 6, y: y(value) + 4,
      "text-anchor": "end" }, value.toFixed(2)));
  }
  const every = Math.max(1, Math.ceil(last / 12));
  for (let round = 0; round <= last; round += every) {
    chart.append(svg("text", { class: "axis-label", x: x(round), y: H - B + 16,
      "text-anchor": "middle" }, round));
  }
  chart.append(svg("text", { class: "axis-label", x: (L + W - R) / 2, y: H - 4,
    "text-anchor": "middle" }, "round"));
  for (const round of new Set(entries.map((e) => e.server_round))) {
    chart.append(svg("line", { class: "step", x1: x(round), x2: x(round), y1: T, y2: H - B }));
    chart.append(svg("text", { class: "step-label", x: x(round) + 4, y: T + 10 }, "unlearned"));
  }
  if (scores.length) {
    const points = scores.map((s) => x(s.server_round) + "," + y(s.value)).join(" ");
    chart.append(svg("polyline", { class: "line", points: points }));
    for (const s of scores) {
      const dot = svg("circle", { class: "point", cx: x(s.server_round), cy: y(s.value), r: 3 });
      dot.append(svg("title", {}, "round " + s.server_round + ": " + s.value.toFixed(4)));
      chart.append(dot);
    }
    const latest = scores[scores.length - 1];
    setText("curve-latest", "round " + latest.server_round + ": " + latest.value.toFixed(4));
  } else {
    chart.append(svg("text", { class: "note", x: (L + W - R) / 2, y: (T + H - B) / 2,
      "text-anchor": "middle" }, "no evaluation yet"));
    setText("curve-latest", "");
  }
  setText("curve-metric", metric || "score");
  byId("curve").replaceChildren(chart);
}

// ------------------------------------------------------------------ start
byId("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = byId("token-input").value.trim();
  byId("token-input").value = "";
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  useToken(token);
});
byId("forget-token").addEventListener("click", () => askForToken(""));
const initial = takeToken();
if (initial) useToken(initial); else askForToken("");
"""

_BODY = """
<header>
  <h1>fedforget: live federation</h1>
  <span class="meta">round <span id="round" class="big">-</span></span>
  <span class="meta">method <span id="method" class="big">-</span></span>
  <span class="meta">history kept for <span id="methods-kept">-</span></span>
  <span class="meta">stored on the server <span id="storage">-</span></span>
  <span id="connection" class="meta">loading</span>
  <button id="forget-token" type="button" hidden>Forget token</button>
</header>
<form id="token-form" hidden>
  <label for="token-input"><strong>API token</strong></label>
  <input id="token-input" type="password" autocomplete="off" spellcheck="false">
  <button type="submit">Show the federation</button>
  <p id="token-message"></p>
  <p class="hint">The token is in <code>&lt;state-dir&gt;/api-token</code> (or your
  <code>api-token-file</code> / <code>api-token-env</code>). It stays in this tab
  (sessionStorage, gone when the tab closes) and is sent only to this API, in the
  Authorization header.</p>
</form>
<main id="federation" hidden>
  <section>
    <h2>Clients</h2>
    <div class="clients">
      <span class="meta">training</span><ul id="clients-training"></ul>
      <span class="meta">forgotten</span><ul id="clients-forgotten"></ul>
      <span class="meta">excluded</span><ul id="clients-excluded"></ul>
    </div>
  </section>
  <section>
    <h2>Test <span id="curve-metric">score</span>
      <span id="curve-latest" class="meta"></span></h2>
    <div id="curve"></div>
  </section>
  <section class="wide">
    <h2>Requests <span id="pending-count" class="meta"></span></h2>
    <table>
      <thead><tr><th>request</th><th>status</th><th>clients</th><th>method</th>
        <th>options</th><th>submitted in round</th><th>outcome</th></tr></thead>
      <tbody id="requests-body"></tbody>
    </table>
    <p class="hint">Pending requests, and those that settled while this page was open.</p>
  </section>
  <section class="wide">
    <h2>Audit log</h2>
    <table>
      <thead><tr><th>round</th><th>request</th><th>method</th><th>clients</th>
        <th>update norm</th><th>applied at</th></tr></thead>
      <tbody id="audit-body"></tbody>
    </table>
  </section>
</main>
"""


def _sha256_source(text: str) -> str:
    """A CSP source expression allowing exactly the inline element whose content is ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


SCRIPT = (
    _SCRIPT.replace("__API_PREFIX__", json.dumps(API_PREFIX))
    .replace("__POLL_MS__", str(POLL_INTERVAL_MS))
    .replace("__TOKEN_KEY__", json.dumps(TOKEN_STORAGE_KEY))
)
PAGE = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    '<meta name="referrer" content="no-referrer">\n'
    "<title>fedforget: live federation</title>\n"
    f"<style>{_STYLE}</style>\n</head>\n<body>{_BODY}<script>{SCRIPT}</script>\n</body>\n</html>\n"
)
"""The page: constant, no federation data in it."""

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"script-src {_sha256_source(SCRIPT)}",
        f"style-src {_sha256_source(_STYLE)}",
        "connect-src 'self'",
        "img-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
"""Headers the page is served with."""
