// opendisco relevance playground: plain JavaScript, no build step, nothing fetched from
// elsewhere. Talks to /playground/api/* with the session cookie and the X-CSRF-Token header.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { csrf: null, app: null, member: null, draftId: null, last: null, poll: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function show(node, on) { node.classList.toggle("hidden", !on); }
function fmt(x, d = 4) { return typeof x === "number" && isFinite(x) ? x.toFixed(d) : "–"; }

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    let msg = err.message || `HTTP ${status}`;
    if (Array.isArray(err.detail)) {
      msg += ": " + err.detail.map((d) => `${(d.loc || []).slice(1).join(".")} ${d.msg}`).join("; ");
    }
    super(msg);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function showError(box, err) {
  box.textContent = err instanceof Error ? err.message : String(err);
  show(box, true);
}

// --- sign in -------------------------------------------------------------------------------
async function start() {
  try {
    const s = await api("GET", "/playground/session");
    await signedIn(s);
  } catch (err) {
    if (err.status === 401 || err.status === 403) show($("signin"), true);
    else showError($("signin-error"), err), show($("signin"), true);
  }
}

async function signedIn(session) {
  state.csrf = session.csrf;
  $("whoami").textContent = `signed in as ${session.user}`;
  show($("signin"), false);
  show($("signout-btn"), !!session.csrf);
  show($("app"), true);
  await loadState();
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  show($("signin-error"), false);
  try {
    const s = await api("POST", "/playground/session", { key: $("signin-key").value });
    $("signin-key").value = "";
    await signedIn(s);
  } catch (err) { showError($("signin-error"), err); }
});

$("signout-btn").addEventListener("click", async () => {
  try { await api("DELETE", "/playground/session"); } finally { location.reload(); }
});

// --- served state, editor ------------------------------------------------------------------
async function loadState() {
  const app = await api("GET", "/playground/api/state");
  state.app = app;
  $("served-version").textContent = `served: ${app.artifacts}`;
  for (const sel of [$("surface"), $("template-surface")]) {
    sel.replaceChildren(...app.surfaces.map((s) => el("option", { value: s }, s)));
  }
  resetEditor();
  await loadDrafts();
}

function draftKind() { return $("draft-kind").value; }
function templateSurface() { return $("template-surface").value; }

function resetEditor() {
  const app = state.app;
  const body = draftKind() === "params" ? app.params : app.templates[templateSurface()];
  $("draft-editor").value = JSON.stringify(body, null, 2);
  state.draftId = null;
  show($("template-surface-label"), draftKind() === "template");
  renderSpecs();
  clearMessages();
}

function renderSpecs() {
  const surface = draftKind() === "template" ? templateSurface() : $("surface").value;
  const specs = state.app.specs[surface] || {};
  const rows = Object.entries(specs).map(([name, s]) =>
    el("tr", {}, el("td", {}, el("code", {}, name)), el("td", {}, s.type),
      el("td", {}, JSON.stringify(s.default === undefined ? null : s.default)), el("td", {}, s.doc || "")));
  $("spec-table").replaceChildren(
    el("tr", {}, el("th", {}, `${surface} parameter`), el("th", {}, "type"), el("th", {}, "default"),
      el("th", {}, "meaning")), ...rows);
}

function clearMessages() {
  for (const id of ["draft-error", "draft-note", "draft-answer-error"]) show($(id), false);
}

/** The editor's document, or an error naming the line and column of bad JSON. */
function editorDraft() {
  const text = $("draft-editor").value;
  let body;
  try {
    body = JSON.parse(text);
  } catch (err) {
    const m = /position (\d+)/.exec(err.message);
    let where = "";
    if (m) {
      const upto = text.slice(0, Number(m[1]));
      const line = upto.split("\n").length;
      where = ` (line ${line}, column ${upto.length - upto.lastIndexOf("\n")})`;
    }
    throw new Error(`Invalid JSON${where}: ${err.message}`);
  }
  const kind = draftKind();
  return { kind, surface: kind === "template" ? templateSurface() : $("surface").value,
    title: $("draft-title").value, body };
}

$("draft-kind").addEventListener("change", resetEditor);
$("template-surface").addEventListener("change", resetEditor);
$("surface").addEventListener("change", () => { renderSpecs(); if (state.member) preview(); });
$("reset-btn").addEventListener("click", resetEditor);

// --- members -------------------------------------------------------------------------------
async function findMembers() {
  const q = $("member-q").value.trim();
  if (!q) return;
  try {
    const data = await api("GET", `/playground/api/members?q=${encodeURIComponent(q)}`);
    const items = data.members.map((m) =>
      el("li", { dataset: { id: m.id }, onclick: () => pickMember(m) }, `${m.id} · ${m.title}`));
    $("member-results").replaceChildren(...(items.length ? items : [el("li", {}, "no member found")]));
  } catch (err) { showError($("draft-error"), err); }
}

function pickMember(m) {
  state.member = m;
  $("member-results").replaceChildren();
  const prefs = `wants ${(m.pref_genders || []).join("/") || "anyone"}, ${m.pref_age_min ?? "?"}–${m.pref_age_max ?? "?"}`;
  $("member-card").replaceChildren(el("strong", {}, m.id), ` · ${m.title} · ${m.gender ?? "?"}, ${m.age ?? "?"} · ${prefs}` +
    ` · interests: ${(m.interests || []).join(", ")}`);
  $("member-card").dataset.id = m.id;
  preview();
}

$("member-search-btn").addEventListener("click", findMembers);
$("member-q").addEventListener("keydown", (ev) => { if (ev.key === "Enter") findMembers(); });

// --- preview (side by side) ----------------------------------------------------------------
async function preview() {
  clearMessages();
  if (!state.member) { showError($("draft-error"), "Pick a member first."); return; }
  let draft;
  try { draft = editorDraft(); } catch (err) { showError($("draft-error"), err); return; }
  $("preview-btn").disabled = true;
  try {
    const data = await api("POST", "/playground/api/compare", {
      user_id: state.member.id, surface: $("surface").value, k: Number($("k").value) || 10, draft,
    });
    state.last = data;
    renderAnswers(data);
  } catch (err) {
    showError($("draft-error"), err);
  } finally { $("preview-btn").disabled = false; }
}

function badge(move) {
  if (!move || move.from === null || move.from === undefined) return el("span", { class: "badge new" }, "new");
  if (move.moved > 0) return el("span", { class: "badge up" }, `▲${move.moved}`);
  if (move.moved < 0) return el("span", { class: "badge down" }, `▼${-move.moved}`);
  return el("span", { class: "badge same" }, "=");
}

function itemRow(it, extra) {
  const title = (it.item && it.item.title) || it.id;
  return el("li", { dataset: { id: it.id }, onclick: () => explain(it.id) },
    extra, el("span", { class: "score" }, fmt(it.score, 3)), `${it.id} · ${title}`);
}

function renderAnswers(data) {
  $("current-version").textContent = data.current.version;
  $("current-list").replaceChildren(...data.current.items.map((it) => itemRow(it, null)));
  const draft = data.draft;
  $("draft-version").textContent = draft.version || "";
  if (draft.error) showError($("draft-answer-error"), `The engine rejected the draft: ${draft.error}`);
  const moves = (data.changes && data.changes.moves) || {};
  const rows = draft.items.map((it) => itemRow(it, badge(moves[it.id])));
  for (const id of (data.changes && data.changes.dropped) || []) {
    rows.push(el("li", { class: "dropped", dataset: { id, dropped: "1" } }, `${id} (left the list)`));
  }
  $("draft-list").replaceChildren(...rows);
  $("draft-list").dataset.changed = data.changes && data.changes.changed ? "1" : "0";
  const errs = Object.entries(draft.source_errors || {});
  if (errs.length) showError($("draft-answer-error"),
    "Sources the engine rejected (answer degraded):\n" + errs.map(([s, e]) => `${s}: ${e}`).join("\n"));
  show($("explain"), false);
}

function explainSide(label, it) {
  if (!it) return el("div", {}, el("h3", {}, label), el("p", { class: "muted" }, "not in this list"));
  const srcRows = Object.keys(Object.assign({}, it.sources, it.ranks)).map((s) =>
    el("tr", {}, el("td", {}, s), el("td", { class: "num" }, it.ranks[s] ?? "–"),
      el("td", { class: "num" }, fmt(it.sources[s]))));
  const steps = (it.trace || []).map((t) =>
    el("tr", {}, el("td", {}, t.step), el("td", { class: "num" }, t.from ?? "–"),
      el("td", { class: "num" }, t.to ?? "–"), el("td", { class: "num" }, fmt(t.delta))));
  const engine = Object.entries(it.engine || {}).map(([s, comps]) =>
    el("div", {}, el("strong", {}, s),
      el("div", { class: "components" }, comps.map((c) =>
        `${"  ".repeat(c.depth)}${fmt(c.value)}  ${c.description}`).join("\n"))));
  return el("div", {},
    el("h3", {}, `${label}: #${it.position + 1} · score ${fmt(it.score)} · fused ${fmt(it.fused)}`),
    el("table", {}, el("tr", {}, el("th", {}, "source"), el("th", {}, "rank"), el("th", {}, "score")), srcRows),
    el("h4", {}, "rerank steps"),
    steps.length ? el("table", {}, el("tr", {}, el("th", {}, "step"), el("th", {}, "from"),
      el("th", {}, "to"), el("th", {}, "Δ score")), steps) : el("p", { class: "muted" }, "no step moved it"),
    el("h4", {}, "engine score components"), engine.length ? engine : el("p", { class: "muted" }, "–"));
}

function explain(id) {
  const data = state.last;
  if (!data) return;
  const find = (side) => (side && side.items || []).find((x) => x.id === id);
  for (const li of document.querySelectorAll("ol.answer li")) li.classList.toggle("selected", li.dataset.id === id);
  $("explain").replaceChildren(el("h2", {}, `Why ${id}`),
    el("div", { class: "sides" }, explainSide("served", find(data.current)), explainSide("draft", find(data.draft))));
  show($("explain"), true);
}

$("preview-btn").addEventListener("click", preview);

// --- drafts: save, list, evaluate, promote -------------------------------------------------
async function saveDraft() {
  clearMessages();
  let draft;
  try { draft = editorDraft(); } catch (err) { showError($("draft-error"), err); return; }
  try {
    const saved = state.draftId
      ? await api("PUT", `/playground/api/drafts/${state.draftId}`, draft)
      : await api("POST", "/playground/api/drafts", draft);
    state.draftId = saved.id;
    $("draft-note").textContent = `Saved draft ${saved.id} (${saved.author.name}, ${saved.updated_at}).`;
    show($("draft-note"), true);
    await loadDrafts();
  } catch (err) { showError($("draft-error"), err); }
}
$("save-btn").addEventListener("click", saveDraft);

async function loadDrafts() {
  const data = await api("GET", "/playground/api/drafts");
  const rows = data.drafts.map((d) => el("tr", { dataset: { id: d.id } },
    el("td", {}, el("strong", {}, d.title), el("br"), el("span", { class: "muted" }, d.id)),
    el("td", {}, d.kind === "template" ? `template ${d.surface}` : "params"),
    el("td", {}, d.author ? d.author.name : ""),
    el("td", {}, (d.updated_at || "").replace("T", " ").slice(0, 19)),
    el("td", { class: "status" }, d.status === "promoted" ? `promoted: ${d.promoted.file}` : d.status),
    el("td", {},
      el("button", { class: "secondary load-btn", type: "button", onclick: () => loadDraft(d.id) }, "Load"), " ",
      el("button", { class: "secondary eval-btn", type: "button", onclick: () => evaluateDraft(d) }, "Evaluate"), " ",
      el("button", { class: "promote-btn", type: "button", onclick: () => promoteDraft(d),
        ...(d.status === "draft" ? {} : { disabled: "" }) }, "Promote"),
      ...(d.kind === "params" ? [" ", el("button", { class: "secondary experiment-btn", type: "button",
        title: "Create an experiment: control = served, treatment = this draft",
        onclick: () => experimentDraft(d) }, "Experiment")] : []))));
  $("drafts-table").querySelector("tbody").replaceChildren(...rows);
}

async function loadDraft(id) {
  clearMessages();
  try {
    const d = await api("GET", `/playground/api/drafts/${id}`);
    $("draft-kind").value = d.kind;
    show($("template-surface-label"), d.kind === "template");
    if (d.kind === "template") $("template-surface").value = d.surface;
    $("draft-editor").value = JSON.stringify(d.body, null, 2);
    $("draft-title").value = d.title;
    state.draftId = d.status === "draft" ? d.id : null;
    renderSpecs();
    if (state.member) await preview();
  } catch (err) { showError($("draft-error"), err); }
}

async function promoteDraft(d) {
  show($("promoted"), false);
  try {
    const p = await api("POST", `/playground/api/drafts/${d.id}/promote`);
    $("promoted").textContent = `Promoted ${p.id} to ${p.promoted.file} (version ${p.promoted.version}) at ` +
      `${p.promoted.path}.\nServe it: ${p.promoted.serve} and restart the API.`;
    $("promoted").classList.remove("error");
    show($("promoted"), true);
    await loadDrafts();
  } catch (err) { showError($("promoted"), err); }
}

async function experimentDraft(d) {
  show($("promoted"), false);
  try {
    const r = await api("POST", `/playground/api/drafts/${d.id}/experiment`, {});
    const arms = r.experiment.arms.map((a) => a.name).join(" vs ");
    $("promoted").textContent = `Created experiment ${r.experiment.id} (${r.experiment.design.kind} design, ` +
      `${arms}, status ${r.experiment.status}).\nStart it: ${r.start}`;
    $("promoted").classList.remove("error");
    show($("promoted"), true);
  } catch (err) { showError($("promoted"), err); }
}

// --- offline evaluation --------------------------------------------------------------------
async function evaluateDraft(d) {
  show($("eval-panel"), true);
  $("eval-draft").textContent = `${d.title} (${d.id})`;
  $("eval-table").replaceChildren();
  $("eval-chart").replaceChildren();
  $("eval-notes").textContent = "";
  try {
    const job = await api("POST", `/playground/api/drafts/${d.id}/evaluations`, {});
    pollJob(job.id);
  } catch (err) { $("eval-status").textContent = `Could not start: ${err.message}`; }
}

function pollJob(id) {
  clearTimeout(state.poll);
  const tick = async () => {
    let job;
    try { job = await api("GET", `/playground/api/jobs/${id}`); } catch (err) {
      $("eval-status").textContent = `Lost the job: ${err.message}`; return;
    }
    $("eval-status").textContent = `${job.status}: ${job.phase || ""}` +
      (job.total ? ` (${job.done}/${job.total})` : job.done ? ` (${job.done})` : "") +
      (job.error ? ` — ${job.error}` : "");
    $("eval-progress").value = job.total ? job.done / job.total : (job.status === "done" ? 1 : 0);
    if (job.status === "done") renderEval(job.result);
    else if (job.status === "queued" || job.status === "running") state.poll = setTimeout(tick, 1000);
  };
  tick();
}

function renderEval(r) {
  const head = el("tr", {}, ...["metric", "served", "draft", "draft − served", "paired SE", "95% CI", "p"]
    .map((h) => el("th", {}, h)));
  const rows = r.diffs.map((d) => el("tr", {}, el("td", {}, d.metric), el("td", { class: "num" }, fmt(d.a)),
    el("td", { class: "num" }, fmt(d.b)), el("td", { class: "num" }, (d.diff >= 0 ? "+" : "") + fmt(d.diff)),
    el("td", { class: "num" }, fmt(d.se)), el("td", { class: "num" }, `[${fmt(d.ci95[0])}, ${fmt(d.ci95[1])}]`),
    el("td", { class: "num" }, d.p_value === null ? "–" : fmt(d.p_value, 3))));
  $("eval-table").replaceChildren(head, ...rows);
  $("eval-chart").replaceChildren(chart(r.diffs));
  const cur = r.models.find((m) => m.name === "current") || {};
  const dra = r.models.find((m) => m.name === "draft") || {};
  $("eval-notes").textContent = `${r.users} users of ${r.dataset} (${r.stage} stage, K=${r.k}), each scored by both: ` +
    `SE is the standard error of the per-user difference. Served ${cur.artifacts} vs draft ${dra.artifacts}.` +
    (cur.degraded || dra.degraded ? ` Degraded answers: served ${cur.degraded}, draft ${dra.degraded}.` : "");
}

/** Grouped bars (served, draft) per metric with the draft's 95% interval as a whisker. */
function chart(diffs) {
  const NS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const W = 560, H = 220, pad = 36, group = (W - pad) / diffs.length;
  const top = Math.max(0.0001, ...diffs.map((d) => Math.max(d.a, d.b, d.b + 1.96 * (d.se || 0))));
  const y = (v) => H - 24 - (Math.max(0, v) / top) * (H - 44);
  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "served vs draft per metric" });
  svg.append(s("line", { x1: pad, y1: H - 24, x2: W, y2: H - 24, stroke: "#999" }));
  diffs.forEach((d, i) => {
    const x = pad + i * group + group * 0.15, w = group * 0.3;
    svg.append(s("rect", { x, y: y(d.a), width: w, height: H - 24 - y(d.a), fill: "#9aa7b8" }));
    svg.append(s("rect", { x: x + w, y: y(d.b), width: w, height: H - 24 - y(d.b), fill: "#2f5fd0" }));
    if (d.se) {
      const cx = x + 1.5 * w;
      const lo = d.a + d.diff - 1.96 * d.se, hi = d.a + d.diff + 1.96 * d.se;
      svg.append(s("line", { x1: cx, y1: y(lo), x2: cx, y2: y(hi), stroke: "#111", "stroke-width": 1.5 }));
    }
    svg.append(s("text", { x: x + w, y: H - 8, "text-anchor": "middle", "font-size": 11 }, d.metric));
  });
  svg.append(s("text", { x: pad, y: 12, "font-size": 11, fill: "#555" },
    "grey: served · blue: draft · whisker: 95% interval of the draft (paired)"));
  return svg;
}

start();
