"use strict";
// fracnode dashboard: plain JavaScript over the REST API (/api/v1). No data is in this page;
// everything is fetched with the credentials the browser holds (HTTP Basic) or the ones entered
// here (kept in sessionStorage, sent as an Authorization header).

const API = "/api/v1";
const AUTH_KEY = "fracnode.authorization";
const REFRESH_MS = 2000;
const STATES = ["queued", "running", "done", "failed", "not_applicable", "superseded"];
let timer = null;
let jobFilter = "";
const previewUrls = new Map(); // API preview URL -> object URL of the fetched PNG

// -- small DOM helpers (text only: nothing from the API is parsed as HTML) --------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "className") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
const $ = (id) => document.getElementById(id);
const badge = (state) => h("span", { className: `badge state-${state}` }, state.replace("_", " "));

function when(ts) {
  if (ts === null || ts === undefined) return "—";
  const s = Math.max(0, Date.now() / 1000 - ts);
  const text = s < 60 ? `${Math.round(s)} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago`
    : s < 86400 ? `${Math.round(s / 3600)} h ago` : new Date(ts * 1000).toLocaleDateString();
  return h("span", { title: new Date(ts * 1000).toLocaleString() }, text);
}
function secs(value) {
  if (value === null || value === undefined) return "—";
  return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(1)} s`;
}
function shortUid(uid) {
  return h("span", { className: "mono", title: uid }, uid.length > 28 ? `…${uid.slice(-26)}` : uid);
}

// -- authentication ----------------------------------------------------------------------------
class Refused extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const stored = sessionStorage.getItem(AUTH_KEY);
  if (stored) headers.Authorization = stored;
  const response = await fetch(path.startsWith("/") ? path : `${API}/${path}`,
    { ...options, headers, credentials: "same-origin" });
  if (response.status === 401) {
    const body = await response.json().catch(() => ({}));
    showSignIn(body.detail || "authentication required");
    throw new Refused(body.detail);
  }
  return response;
}
async function json(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

function showSignIn(reason) {
  stopRefresh();
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("view").replaceChildren();
  $("sign-in").hidden = false;
  const refusal = $("refusal");
  refusal.hidden = !reason;
  refusal.textContent = reason ? `The node refused access: ${reason}` : "";
}

async function signIn(authorization) {
  sessionStorage.setItem(AUTH_KEY, authorization);
  await start();
}

async function start() {
  let session;
  try {
    session = await json("session");
  } catch (error) {
    if (!(error instanceof Refused)) showSignIn(String(error.message || error));
    return;
  }
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").textContent = `${session.principal} · fracnode ${session.version}`;
  $("sign-out").hidden = !sessionStorage.getItem(AUTH_KEY);
  route();
}

// -- views -------------------------------------------------------------------------------------
function stopRefresh() { if (timer) { clearTimeout(timer); timer = null; } }
function every(render) {
  const tick = async () => {
    try { await render(); } catch (error) { if (!(error instanceof Refused)) console.error(error); }
    if (timer !== null) timer = setTimeout(tick, REFRESH_MS);
  };
  timer = setTimeout(tick, 0);
}

function deliveries(list) {
  if (!list.length) return "—";
  return list.map((d) => h("div", { className: d.failed ? "error" : null,
    title: d.last_error || null },
  `${d.destination}: ${d.delivered}/${d.objects} delivered${d.pending ? `, ${d.pending} pending` : ""}`
  + `${d.failed ? `, ${d.failed} failed` : ""}`));
}

async function retry(job, button) {
  button.disabled = true;
  const response = await api(`jobs/${job.id}/retry`, { method: "POST" });
  const body = await response.json().catch(() => ({}));
  const row = button.closest("tr");
  if (!response.ok && row) row.querySelector(".reason").textContent = body.detail || `HTTP ${response.status}`;
}

function jobRow(job) {
  const reason = job.state === "failed" || (job.state === "queued" && job.last_error)
    ? h("span", { className: "error" }, job.last_error) : job.summary;
  return h("tr", { "data-job-id": job.id, "data-state": job.state },
    h("td", {}, h("a", { href: `#/study/${encodeURIComponent(job.study_uid)}/${job.id}` }, `#${job.id}`)),
    h("td", {}, shortUid(job.study_uid)),
    h("td", {}, job.route, h("div", { className: "muted" }, job.pipeline)),
    h("td", {}, badge(job.state)),
    h("td", { className: "attempts" }, `${job.attempts}/${job.max_attempts}`),
    h("td", {}, when(job.created_at)),
    h("td", {}, `queue ${secs(job.timings.queue_s)}`, h("div", { className: "muted" }, `run ${secs(job.timings.run_s)}`)),
    h("td", { className: "reason" }, reason),
    h("td", {}, deliveries(job.deliveries)),
    h("td", {},
      h("a", { href: `#/study/${encodeURIComponent(job.study_uid)}/${job.id}`, className: "open" }, "Open"),
      " ",
      job.retryable ? h("button", { type: "button", className: "retry",
        onclick: (event) => retry(job, event.target) }, "Retry") : null));
}

function jobsTable(jobs) {
  return h("table", { id: "jobs" },
    h("thead", {}, h("tr", {}, ...["Job", "Study UID", "Route / pipeline", "State", "Attempts",
      "Created", "Timings", "Result / failure", "Deliveries", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, jobs.length ? jobs.map(jobRow)
      : h("tr", {}, h("td", { colspan: 10, className: "muted" }, "No jobs yet."))));
}

function viewJobs() {
  const select = h("select", { id: "state-filter", onchange: (e) => { jobFilter = e.target.value; } },
    h("option", { value: "" }, "all states"), STATES.map((s) => h("option", { value: s, selected: s === jobFilter }, s)));
  const holder = h("div", { className: "card" }, h("p", { className: "muted" }, "Loading…"));
  $("view").replaceChildren(
    h("div", { className: "toolbar" }, h("h1", {}, "Jobs"), h("span", { className: "spacer" }), select,
      h("span", { className: "muted" }, "refreshes every 2 s")), holder);
  every(async () => {
    const query = jobFilter ? `?state=${encodeURIComponent(jobFilter)}&limit=100` : "?limit=100";
    holder.replaceChildren(jobsTable(await json(`jobs${query}`)));
  });
}

function viewStudies() {
  const holder = h("div", { className: "card" }, h("p", { className: "muted" }, "Loading…"));
  $("view").replaceChildren(h("h1", {}, "Studies"), holder);
  every(async () => {
    const studies = await json("studies?limit=100");
    holder.replaceChildren(h("table", { id: "studies" },
      h("thead", {}, h("tr", {}, ...["Study UID", "From", "Modalities", "Series / instances", "Received",
        "Routes matched", "Jobs"].map((t) => h("th", {}, t)))),
      h("tbody", {}, studies.length ? studies.map((s) => h("tr", {},
        h("td", {}, h("a", { href: `#/study/${encodeURIComponent(s.study_uid)}` }, shortUid(s.study_uid))),
        h("td", {}, s.calling_ae),
        h("td", {}, s.modalities.join(", ")),
        h("td", {}, `${s.series} / ${s.instances}`),
        h("td", {}, when(s.last_received_at), s.receiving ? h("div", { className: "muted" }, "receiving…") : null),
        h("td", {}, s.routes.length ? s.routes.join(", ") : h("span", { className: "muted" }, s.route_status || "—")),
        h("td", {}, Object.entries(s.jobs).map(([state, n]) => [badge(state), ` ${n} `]))))
        : h("tr", {}, h("td", { colspan: 7, className: "muted" }, "No studies yet.")))));
  });
}

async function previewImage(url, caption) {
  const img = h("img", { alt: `preview: ${caption}` });
  const figure = h("figure", {}, img, h("figcaption", {}, caption));
  if (!previewUrls.has(url)) {
    const response = await api(url);
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      return h("figure", {}, h("p", { className: "error" }, body.detail || `HTTP ${response.status}`));
    }
    previewUrls.set(url, URL.createObjectURL(await response.blob()));
  }
  img.src = previewUrls.get(url);
  img.className = "preview";
  return figure;
}

function findingsTable(findings) {
  const images = (findings && findings.images) || [];
  if (!images.length) return h("p", { className: "muted" }, "No image findings recorded.");
  return h("table", { className: "findings" },
    h("thead", {}, h("tr", {}, ...["SOP Instance UID", "Category", "Fracture probability", "Regions",
      "Body region"].map((t) => h("th", {}, t)))),
    h("tbody", {}, images.map((i) => h("tr", {},
      h("td", {}, shortUid(i.sop_instance_uid)),
      h("td", {}, h("span", { className: `badge cat-${i.category}` }, i.category)),
      h("td", {}, i.fracture_probability.toFixed(3)),
      h("td", {}, String((i.regions || []).length)),
      h("td", {}, i.body_region ? `${i.body_region} (${(i.body_region_probability * 100).toFixed(0)} %)` : "—")))));
}

async function jobCard(job, highlighted) {
  const t = job.timings;
  const facts = [["Route", job.route], ["Pipeline", job.pipeline], ["State", badge(job.state)],
    ["Attempts", `${job.attempts}/${job.max_attempts}`], ["Summary", job.summary || "—"],
    ["Failure", job.last_error ? h("span", { className: "error" }, job.last_error) : "—"],
    ["Timings", `assembly ${secs(t.assembly_s)} · queue ${secs(t.queue_s)} · pipeline ${secs(t.pipeline_s)}`
      + ` · staging ${secs(t.stage_s)} · dispatch ${secs(t.dispatch_s)}`],
    ["Deliveries", deliveries(job.deliveries)]];
  const previews = await Promise.all(job.previews.map((url, i) =>
    previewImage(url, job.findings.images[i].sop_instance_uid)));
  return h("div", { className: "card job", "data-job-id": job.id, id: highlighted ? "highlighted" : null },
    h("div", { className: "toolbar" }, h("h2", {}, `Job #${job.id} · revision ${job.revision}`),
      h("span", { className: "spacer" }),
      job.retryable ? h("button", { type: "button", className: "retry",
        onclick: async (e) => { await retry(job, e.target); route(); } }, "Retry") : null),
    h("dl", { className: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h2", {}, "Findings"), findingsTable(job.findings),
    previews.length ? h("div", { className: "previews" }, previews) : null);
}

async function viewStudy(uid, jobId) {
  const holder = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  $("view").replaceChildren(h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")), holder);
  let shown = "";
  every(async () => {
    const study = await json(`studies/${encodeURIComponent(uid)}`);
    const key = JSON.stringify(study.job_list.map((j) => [j.id, j.state, j.attempts, j.deliveries]));
    if (key === shown) return; // only redraw when something changed (keeps the page still)
    shown = key;
    const cards = await Promise.all(study.job_list.map((j) => jobCard(j, String(j.id) === jobId)));
    holder.replaceChildren(
      h("div", { className: "card", id: "study" },
        h("h1", {}, "Study ", shortUid(study.study_uid)),
        h("dl", { className: "facts" },
          h("dt", {}, "Study Instance UID"), h("dd", { className: "mono" }, study.study_uid),
          h("dt", {}, "From"), h("dd", {}, study.calling_ae || "—"),
          h("dt", {}, "Received"), h("dd", {}, when(study.first_received_at), study.receiving ? " (still receiving)" : ""),
          h("dt", {}, "Routes matched"), h("dd", { id: "routes" }, study.routes.join(", ") || study.route_status || "—")),
        h("h2", {}, "Series"),
        h("table", {}, h("thead", {}, h("tr", {}, ...["Series UID", "Modality", "Body part", "Description",
          "Instances"].map((t) => h("th", {}, t)))),
        h("tbody", {}, study.series_list.map((s) => h("tr", {}, h("td", {}, shortUid(s.series_uid)),
          h("td", {}, s.modality), h("td", {}, s.body_part), h("td", {}, s.series_description),
          h("td", {}, String(s.instances))))))),
      ...cards);
  });
}

async function echo(peer, cell, button) {
  button.disabled = true;
  cell.replaceChildren(h("span", { className: "muted" }, "checking…"));
  try {
    const result = await json(`peers/${encodeURIComponent(peer.name)}/echo`, { method: "POST" });
    cell.replaceChildren(h("span", { className: `badge ${result.ok ? "ok" : "bad"}` }, result.ok ? "reachable" : "unreachable"),
      " ", result.ok ? `${result.check} ${result.latency_ms} ms` : h("span", { className: "error" }, result.message));
  } catch (error) {
    if (!(error instanceof Refused)) cell.replaceChildren(h("span", { className: "error" }, String(error.message)));
  } finally { button.disabled = false; }
}

async function viewPeers() {
  const [peers, destinations] = await Promise.all([json("peers"), json("destinations")]);
  const rows = peers.map((p) => {
    const cell = h("td", { className: "echo-result" });
    const button = h("button", { type: "button", className: "echo", onclick: () => echo(p, cell, button) },
      p.type === "dicomweb" ? "Check (QIDO-RS)" : "Echo");
    return h("tr", { "data-peer": p.name }, h("td", {}, p.name), h("td", {}, p.type),
      h("td", { className: "mono" }, p.url || `${p.ae_title}@${p.host}:${p.port}`), h("td", {}, button), cell);
  });
  $("view").replaceChildren(h("h1", {}, "Peers"),
    h("div", { className: "card" }, h("table", { id: "peers" },
      h("thead", {}, h("tr", {}, ...["Name", "Type", "Address", "", "Result"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 5, className: "muted" }, "No peers configured."))))),
    h("h1", {}, "Destinations"),
    h("div", { className: "card" }, h("table", { id: "destinations" },
      h("thead", {}, h("tr", {}, ...["Name", "Type", "Target", "Pending", "Delivered", "Failed", "Last delivery",
        "Last error"].map((t) => h("th", {}, t)))),
      h("tbody", {}, destinations.map((d) => h("tr", {}, h("td", {}, d.name), h("td", {}, d.type),
        h("td", { className: "mono" }, d.target), h("td", {}, String(d.pending)), h("td", {}, String(d.delivered)),
        h("td", { className: d.failed ? "error" : null }, String(d.failed)), h("td", {}, when(d.last_delivered_at)),
        h("td", { className: "reason error" }, d.last_error)))))));
}

async function viewConfig() {
  const config = await json("config");
  $("view").replaceChildren(h("h1", {}, "Configuration"),
    h("p", { className: "muted" }, "The configuration the node runs with (read only; secrets shown as ***). "
      + "Change the YAML file and restart the node to change it."),
    h("pre", { className: "config", id: "config" }, JSON.stringify(config, null, 2)));
}

async function route() {
  stopRefresh();
  const [, view = "jobs", arg, extra] = location.hash.split("/");
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.view === view || (view === "study" && link.dataset.view === "studies"));
  }
  try {
    if (view === "study" && arg) await viewStudy(decodeURIComponent(arg), extra);
    else if (view === "studies") viewStudies();
    else if (view === "peers") await viewPeers();
    else if (view === "config") await viewConfig();
    else viewJobs();
  } catch (error) {
    if (!(error instanceof Refused)) $("view").replaceChildren(h("p", { className: "refusal" }, String(error.message)));
  }
}

window.addEventListener("hashchange", () => { if ($("sign-in").hidden) route(); });
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (token) signIn(`Bearer ${token}`);
});
$("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const bytes = new TextEncoder().encode(`${$("user").value}:${$("password").value}`);
  signIn(`Basic ${btoa(String.fromCharCode(...bytes))}`);
});
$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(AUTH_KEY);
  showSignIn("");
});
start();
