"use strict";
// fracnode dashboard: plain JavaScript over the REST API (/api/v1). No data is in this page;
// everything is fetched with the credentials the browser holds (HTTP Basic) or the ones entered
// here (kept in sessionStorage, sent as an Authorization header).

const API = "/api/v1";
const AUTH_KEY = "fracnode.authorization";
const REFRESH_MS = 2000;
const STATES = ["queued", "running", "done", "failed", "not_applicable", "superseded"];
const CATEGORIES = ["fracture", "suspicious", "negative"];
let timer = null;
const filters = { state: "", pipeline: "", since: "", category: "" };
let searchText = ""; // kept in memory only: never in the URL (it may be an accession number)
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
  // children may nest arrays at any depth (rows of cells of parts): flatten them all, so that no
  // element is ever turned into text ("[object HTMLElement]")
  for (const child of children.flat(Infinity)) {
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
function duration(s) {
  return s < 120 ? `${Math.round(s)} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
}
function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function categoryBadge(category) {
  return category ? h("span", { className: `badge cat-${category}` }, category) : h("span", { className: "muted" }, "—");
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
  if (response.status === 503) {  // cleared by troubleBanner() once the database answers again
    const body = await response.clone().json().catch(() => ({}));
    showOutage(body.detail || "the node's database cannot be reached");
  }
  return response;
}

function showOutage(text) {
  // every page says when the node's database is down: nothing it shows is current meanwhile
  const banner = $("outage-banner");
  banner.hidden = !text;
  banner.textContent = text ? `Database unavailable: ${text}` : "";
  // what never loaded says why, instead of "Loading…" for as long as the outage lasts
  for (const waiting of document.querySelectorAll("p.loading")) {
    waiting.textContent = text ? "Not shown while the database is unavailable." : "Loading…";
  }
}
function loading() { return h("p", { className: "muted loading" }, "Loading…"); }
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
    try { await render(); await troubleBanner(); } catch (error) { if (!(error instanceof Refused)) console.error(error); }
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
    h("td", { className: "col-uid" }, shortUid(job.study_uid)),
    h("td", {}, job.route, h("div", { className: "muted" }, job.pipeline)),
    h("td", {}, badge(job.state)),
    h("td", { className: "result" }, categoryBadge(job.category)),
    h("td", { className: "attempts col-wide" }, `${job.attempts}/${job.max_attempts}`),
    h("td", { className: "col-wide" }, when(job.created_at)),
    h("td", { className: "col-wide" }, `queue ${secs(job.timings.queue_s)}`, h("div", { className: "muted" }, `run ${secs(job.timings.run_s)}`)),
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
    h("thead", {}, h("tr", {}, ...[["Job"], ["Study UID", "col-uid"], ["Route / pipeline"], ["State"], ["Result"],
      ["Attempts", "col-wide"], ["Created", "col-wide"], ["Timings", "col-wide"], ["Summary / failure"],
      ["Deliveries"], [""]].map(([t, c]) => h("th", { className: c || null }, t)))),
    h("tbody", {}, jobs.length ? jobs.map(jobRow)
      : h("tr", {}, h("td", { colspan: 11, className: "muted" }, "No jobs match."))));
}

function filterQuery() {
  const params = new URLSearchParams({ limit: "100" });
  if (filters.state) params.set("state", filters.state);
  if (filters.pipeline) params.set("pipeline", filters.pipeline);
  if (filters.category) params.set("category", filters.category);
  if (filters.since) params.set("since", String(Date.now() / 1000 - Number(filters.since) * 3600));
  return params.toString();
}

async function filterBar(onchange) {
  let pipelines = [];
  try { pipelines = [...new Set((await json("config")).routes.map((r) => r.pipeline))]; } catch (error) { /* shown empty */ }
  const select = (key, label, options) => h("select", { id: `filter-${key}`, "aria-label": label,
    onchange: (e) => { filters[key] = e.target.value; onchange(); } },
  h("option", { value: "" }, label), options.map(([value, text]) =>
    h("option", { value, selected: value === filters[key] }, text)));
  return h("div", { className: "filters" },
    select("state", "any state", STATES.map((s) => [s, s.replace("_", " ")])),
    select("pipeline", "any pipeline", pipelines.map((p) => [p, p])),
    select("category", "any result", CATEGORIES.map((c) => [c, c])),
    select("since", "any time", [["1", "last hour"], ["24", "last 24 h"], ["168", "last 7 days"]]));
}

async function viewJobs() {
  const holder = h("div", { className: "card" }, loading());
  const refresh = async () => holder.replaceChildren(jobsTable(await json(`jobs?${filterQuery()}`)));
  $("view").replaceChildren(
    h("div", { className: "toolbar" }, h("h1", {}, "Jobs"), h("span", { className: "spacer" }),
      h("span", { className: "muted" }, "refreshes every 2 s")),
    await filterBar(refresh), holder);
  every(refresh);
}

function studyRow(s) {
  return h("tr", { "data-study": s.study_uid },
    h("td", { className: "col-uid" }, h("a", { href: `#/study/${encodeURIComponent(s.study_uid)}` }, shortUid(s.study_uid))),
    h("td", {}, s.calling_ae || "—"),
    h("td", {}, s.modalities.join(", ") || "—"),
    h("td", { className: "col-wide" }, `${s.series} / ${s.instances}`),
    h("td", {}, when(s.last_received_at), s.receiving ? h("div", { className: "muted" }, "receiving…") : null),
    h("td", {}, s.routes.length ? s.routes.join(", ") : h("span", { className: "muted" }, s.route_status || "—")),
    h("td", { className: "result" }, categoryBadge(s.category),
      s.result ? h("div", { className: s.result_state === "failed" ? "error reason" : "muted reason" }, s.result) : null),
    h("td", { className: "col-wide" }, Object.entries(s.jobs).map(([state, n]) => [badge(state), ` ${n} `])));
}

function studiesTable(studies, empty) {
  return h("table", { id: "studies" },
    h("thead", {}, h("tr", {}, ...[["Study UID", "col-uid"], ["From"], ["Modalities"], ["Series / instances", "col-wide"],
      ["Received"], ["Routes matched"], ["Result"], ["Jobs", "col-wide"]].map(([t, c]) => h("th", { className: c || null }, t)))),
    h("tbody", {}, studies.length ? studies.map(studyRow)
      : h("tr", {}, h("td", { colspan: 8, className: "muted" }, empty))));
}

async function viewStudies() {
  const holder = h("div", { className: "card" }, loading());
  const input = h("input", { id: "search", type: "search", autocomplete: "off",
    placeholder: "Study Instance UID or accession number", "aria-label": "search" });
  input.value = searchText; // a property, not an attribute: the text stays out of the page's HTML
  const refresh = async () => {
    const studies = searchText
      ? await json("studies/search", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: searchText }) })
      : await json(`studies?${filterQuery()}`);
    holder.replaceChildren(studiesTable(studies, searchText ? "No study matches the search." : "No studies match."));
  };
  const form = h("form", { className: "search", onsubmit: (e) => { e.preventDefault(); searchText = input.value.trim(); refresh(); } },
    input, h("button", { type: "submit" }, "Search"),
    h("button", { type: "button", onclick: () => { searchText = ""; input.value = ""; refresh(); } }, "Clear"));
  $("view").replaceChildren(h("div", { className: "toolbar" }, h("h1", {}, "Studies"), h("span", { className: "spacer" }), form),
    h("p", { className: "hint" }, "The search text is matched on the node and never shown in lists or kept in the address bar."),
    await filterBar(refresh), holder);
  every(refresh);
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
  if (findings && findings.kind === "CSpineFindings") return vertebraTable(findings);
  const images = (findings && findings.images) || [];
  if (!images.length) return h("p", { className: "muted" }, "No image findings recorded.");
  return h("table", { className: "findings" },
    h("thead", {}, h("tr", {}, ...["SOP Instance UID", "Category", "Fracture probability", "Regions",
      "Body region"].map((t) => h("th", {}, t)))),
    h("tbody", {}, images.map((i) => h("tr", {},
      h("td", {}, shortUid(i.sop_instance_uid)),
      h("td", {}, categoryBadge(i.category)),
      h("td", {}, i.fracture_probability.toFixed(3)),
      h("td", {}, String((i.regions || []).length)),
      h("td", {}, bodyRegion(i))))));
}

// The finding site as the node decided it: from the header, from the model (with its confidence), or not determined.
function bodyRegion(i) {
  if (!i.body_region) return "not determined";
  if (i.body_region_source === "header") return `${i.body_region} (from the header)`;
  return `${i.body_region} (model, ${(i.body_region_probability * 100).toFixed(0)} %)`;
}

function vertebraTable(f) {
  return h("div", {},
    h("p", {}, "Cervical spine: ", categoryBadge(f.category), ` probability ${f.fracture_probability.toFixed(3)}`),
    h("table", { className: "findings vertebrae" },
      h("thead", {}, h("tr", {}, ...["Vertebra", "Category", "Fracture probability", "Centre (mm, LPS)"].map((t) => h("th", {}, t)))),
      h("tbody", {}, f.vertebrae.map((v) => h("tr", {},
        h("td", {}, `C${v.label}`), h("td", {}, categoryBadge(v.category)),
        h("td", {}, v.fracture_probability.toFixed(3)),
        h("td", { className: "mono" }, v.centre.map((c) => c.toFixed(0)).join(", ")))))));
}

async function downloads(job) {
  if (job.state !== "done") return null;
  const files = await json(`jobs/${job.id}/results`);
  if (!files.length) return null;
  return h("div", { className: "downloads" }, "Download: ", files.map((f) => [h("button", { type: "button", className: "download",
    disabled: f.size === null, title: f.size === null ? "no copy held here (delivered to peers only, or purged)" : bytes(f.size),
    onclick: () => download(f) }, f.kind), " "]));
}

async function download(file) {
  const response = await api(file.url);
  if (!response.ok) return;
  const name = (response.headers.get("Content-Disposition") || "").split("filename=")[1] || `${file.kind}.dcm`;
  const link = h("a", { href: URL.createObjectURL(await response.blob()), download: name.replaceAll('"', "") });
  document.body.append(link);
  link.click();
  link.remove();
}

async function jobCard(job, highlighted) {
  const t = job.timings;
  const facts = [["Route", job.route], ["Pipeline", job.pipeline], ["State", badge(job.state)],
    ["Result", categoryBadge(job.category)],
    ["Attempts", `${job.attempts}/${job.max_attempts}`], ["Summary", job.summary || "—"],
    ["Failure", job.last_error ? h("span", { className: "error" }, job.last_error) : "—"],
    ["Timings", `assembly ${secs(t.assembly_s)} · queue ${secs(t.queue_s)} · pipeline ${secs(t.pipeline_s)}`
      + ` · staging ${secs(t.stage_s)} · dispatch ${secs(t.dispatch_s)}`],
    ["Deliveries", deliveries(job.deliveries)]];
  const images = (job.findings && job.findings.images) || [];
  const previews = await Promise.all(job.previews.map((url, i) =>
    previewImage(url, images[i] ? images[i].sop_instance_uid : "sagittal view, vertebrae labelled")));
  return h("div", { className: "card job", "data-job-id": job.id, id: highlighted ? "highlighted" : null },
    h("div", { className: "toolbar" }, h("h2", {}, `Job #${job.id} · revision ${job.revision}`),
      h("span", { className: "spacer" }),
      job.retryable ? h("button", { type: "button", className: "retry",
        onclick: async (e) => { await retry(job, e.target); route(); } }, "Retry") : null),
    h("dl", { className: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    await downloads(job),
    h("h2", {}, "Findings"), findingsTable(job.findings),
    previews.length ? h("div", { className: "previews" }, previews) : null);
}

async function analyzeAgain(uid, button, note) {
  button.disabled = true;
  const response = await api(`studies/${encodeURIComponent(uid)}/analyze`, { method: "POST",
    headers: { "Content-Type": "application/json" }, body: "{}" });
  const body = await response.json().catch(() => ({}));
  note.textContent = response.ok ? body.message : (body.detail || `HTTP ${response.status}`);
  note.className = response.ok ? "muted" : "error";
  button.disabled = false;
}

async function viewStudy(uid, jobId) {
  const holder = h("div", {}, loading());
  const note = h("span", { id: "analyze-note", className: "muted" });
  const button = h("button", { type: "button", id: "analyze-again", onclick: () => analyzeAgain(uid, button, note) },
    "Re-analyse");
  $("view").replaceChildren(h("div", { className: "toolbar" }, h("a", { href: "#/studies" }, "← Studies"),
    h("span", { className: "spacer" }), note, button), holder);
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
          h("dt", {}, "Revision"), h("dd", {}, String(study.revision)),
          h("dt", {}, "Routes matched"), h("dd", { id: "routes" }, study.routes.join(", ") || study.route_status || "—")),
        h("h2", {}, "Series"),
        h("table", {}, h("thead", {}, h("tr", {}, ...["Series UID", "Modality", "Body part", "Description",
          "Instances"].map((t) => h("th", {}, t)))),
        h("tbody", {}, study.series_list.map((s) => h("tr", {}, h("td", {}, shortUid(s.series_uid)),
          h("td", {}, s.modality || "—"), h("td", {}, s.body_part || "—"), h("td", {}, s.series_description || "—"),
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
    h("div", { className: "card" }, destinationsTable(destinations)));
}

function destinationsTable(destinations) {
  return h("table", { id: "destinations" },
    h("thead", {}, h("tr", {}, ...[["Name"], ["Type", "col-wide"], ["Target"], ["Pending"], ["Delivered"], ["Failed"],
      ["Oldest waiting"], ["Last delivery", "col-wide"], ["Trouble / last error"]].map(([t, c]) => h("th", { className: c || null }, t)))),
    h("tbody", {}, destinations.length ? destinations.map((d) => h("tr", { "data-destination": d.name, className: d.in_trouble ? "trouble" : null },
      h("td", {}, d.name, d.in_trouble ? h("div", {}, h("span", { className: "badge bad" }, "in trouble")) : null),
      h("td", { className: "col-wide" }, d.type),
      h("td", { className: "mono reason" }, d.target), h("td", {}, String(d.pending)), h("td", {}, String(d.delivered)),
      h("td", { className: d.failed ? "error" : null }, String(d.failed)),
      h("td", {}, d.pending ? `${secs(d.oldest_pending_age_s)} (${d.attempts} attempt(s))` : "—"),
      h("td", { className: "col-wide" }, when(d.last_delivered_at)),
      h("td", { className: "reason error" }, d.trouble || d.last_error || "")))
      : h("tr", {}, h("td", { colspan: 9, className: "muted" }, "No destinations configured."))));
}

function chart(activity) {
  // a small inline SVG: bars = jobs finished per bucket, line = median latency (study complete → result)
  const W = 640, H = 140, pad = 28;
  const n = activity.buckets.length;
  const maxJobs = Math.max(1, ...activity.buckets.map((b) => b.finished));
  const latencies = activity.buckets.map((b) => b.median_latency_s).filter((v) => v !== null);
  const maxLatency = Math.max(1, ...latencies);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    svg.append(el);
    return el;
  };
  const bw = (W - 2 * pad) / n;
  const points = [];
  activity.buckets.forEach((b, i) => {
    const bh = (b.finished / maxJobs) * (H - 2 * pad);
    add("rect", { x: pad + i * bw + 1, y: H - pad - bh, width: Math.max(1, bw - 2), height: bh, class: b.failed ? "column failed" : "column" });
    if (b.median_latency_s !== null) points.push(`${pad + (i + 0.5) * bw},${H - pad - (b.median_latency_s / maxLatency) * (H - 2 * pad)}`);
  });
  if (points.length > 1) add("polyline", { points: points.join(" "), class: "latency" });
  add("text", { x: pad, y: 14, class: "axis" }, `jobs finished per ${duration(activity.bucket_s)} (bars; most ${maxJobs})`);
  add("text", { x: W - pad, y: 14, class: "axis latency-label", "text-anchor": "end" },
    latencies.length ? `median latency, study complete to result (line; top ${secs(maxLatency)})` : "no latency yet");
  add("line", { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, class: "base" });
  add("text", { x: pad, y: H - 8, class: "axis" }, `${Math.round(n * activity.bucket_s / 3600)} h ago`);
  add("text", { x: W - pad, y: H - 8, class: "axis", "text-anchor": "end" }, "now");
  return svg;
}

async function viewOverview() {
  const holder = h("div", {}, loading());
  $("view").replaceChildren(h("h1", {}, "Overview"), holder);
  every(async () => {
    const [models, disk, activity, destinations, jobs] = await Promise.all([json("models"), json("disk"),
      json("activity?hours=24&buckets=24"), json("destinations"), json("jobs?state=queued&state=running&limit=500")]);
    const troubled = destinations.filter((d) => d.in_trouble);
    const used = disk.size_bytes - disk.free_bytes;
    const percent = disk.size_bytes ? Math.round((used / disk.size_bytes) * 100) : 0;
    const total = activity.buckets.reduce((a, b) => a + b.finished, 0);
    holder.replaceChildren(
      h("p", { className: "notice", id: "notice" }, models.notice),
      h("div", { className: "grid" },
        h("div", { className: "card", id: "activity" }, h("h2", {}, "Last 24 hours"),
          h("p", {}, `${total} job(s) finished; ${jobs.length} queued or running`), chart(activity)),
        h("div", { className: "card", id: "disk" }, h("h2", {}, "Disk"),
          h("dl", { className: "facts" },
            h("dt", {}, "Data folder"), h("dd", { className: "mono" }, disk.data_dir),
            h("dt", {}, "Used"), h("dd", {}, `${bytes(used)} of ${bytes(disk.size_bytes)} (${percent} %)`),
            h("dt", {}, "Free"), h("dd", { className: disk.free_bytes < 2 * disk.min_free_bytes ? "error" : null },
              `${bytes(disk.free_bytes)} (instances are refused below ${bytes(disk.min_free_bytes)})`),
            h("dt", {}, "Spool"), h("dd", {}, `${bytes(disk.spool_bytes)} in ${disk.studies_held} study(ies)`)),
          h("div", { className: "meter" }, h("span", { style: `width: ${percent}%` })))),
      h("div", { className: "card", id: "trouble" }, h("h2", {}, "Destinations in trouble"),
        troubled.length ? destinationsTable(troubled) : h("p", { className: "muted" }, "None: every destination delivers.")),
      h("div", { className: "card", id: "models" }, h("h2", {}, "Models"),
        h("table", {}, h("thead", {}, h("tr", {}, ...["Pipeline", "Bundle", "Version", "Measured accuracy", "Measured on"].map((t) => h("th", {}, t)))),
          h("tbody", {}, models.models.length ? models.models.map((m) => h("tr", { "data-bundle": m.bundle },
            h("td", {}, m.pipeline), h("td", {}, m.name || m.bundle), h("td", {}, m.version || "—"),
            h("td", {}, m.problem ? h("span", { className: "error" }, m.problem)
              : m.metrics.length ? m.metrics.map((x) => h("div", {}, `${x.what} ${x.value}`)) : "not recorded"),
            h("td", { className: "reason muted" }, m.measured_on || "—")))
            : h("tr", {}, h("td", { colspan: 5, className: "muted" }, "No model is routed."))))));
  });
}

async function viewAudit() {
  const holder = h("div", { className: "card" }, loading());
  $("view").replaceChildren(h("h1", {}, "Audit trail"),
    h("p", { className: "hint" }, "The node's audit trail (IHE ATNA, audit.log): associations, instances received and delivered, refused connections and credentials, operator actions, configuration changes, retention purges. Who, from where, what; no patient data."),
    holder);
  every(async () => {
    const events = await json("audit?limit=200");
    holder.replaceChildren(h("table", { id: "audit" },
      h("thead", {}, h("tr", {}, ...["When", "What", "Outcome", "Who", "From", "Detail"].map((t) => h("th", {}, t)))),
      h("tbody", {}, events.length ? events.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.kind),
        h("td", {}, e.outcome), h("td", {}, e.who || "—"), h("td", { className: "mono" }, e.where || "—"),
        h("td", { className: "reason" }, e.detail)))
        : h("tr", {}, h("td", { colspan: 6, className: "muted" }, "Nothing recorded yet.")))));
  });
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
  const [, view = "overview", arg, extra] = location.hash.split("/");
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.view === view || (view === "study" && link.dataset.view === "studies"));
  }
  try {
    if (view === "study" && arg) await viewStudy(decodeURIComponent(arg), extra);
    else if (view === "studies") await viewStudies();
    else if (view === "jobs") await viewJobs();
    else if (view === "peers") await viewPeers();
    else if (view === "audit") await viewAudit();
    else if (view === "config") await viewConfig();
    else await viewOverview();
    await troubleBanner();
  } catch (error) {
    if (!(error instanceof Refused)) $("view").replaceChildren(h("p", { className: "refusal" }, String(error.message)));
  }
}

async function troubleBanner() {
  // every page says when a destination is in trouble: its results are not reaching the PACS
  try {
    const troubled = (await json("destinations")).filter((d) => d.in_trouble);
    showOutage("");  // the destinations are read from the database: it answers
    const banner = $("trouble-banner");
    banner.hidden = !troubled.length;
    banner.replaceChildren(...troubled.map((d) => h("div", {}, h("a", { href: "#/peers" }, `Destination ${d.name}`),
      `: ${d.trouble}`)));
  } catch (error) { /* the page itself shows the refusal */ }
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
