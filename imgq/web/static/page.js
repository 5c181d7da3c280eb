// The page's behaviour (static/index.html): classify an upload with POST /predict, send bursts of copies,
// and poll GET /activity once a second for the live view. No library, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const BURST_MAX = 200;
const BURST_CONNECTIONS = 5;
const HISTORY_S = 60;

// ---- helpers -------------------------------------------------------------------------------------
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) node.append(child);
  return node;
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1000 ? (value / 1000).toFixed(2) + " s" : (value >= 100 ? value.toFixed(0) : value.toFixed(1)) + " ms";
}

function size(bytes) {
  return bytes < 1024 ? bytes + " bytes" : bytes < 1048576 ? (bytes / 1024).toFixed(1) + " KB" : (bytes / 1048576).toFixed(1) + " MB";
}

// A latency for a tile: the number large, its unit small.
function tileMs(node, value) {
  if (value === null || value === undefined) { node.textContent = "–"; return; }
  const [number, unit] = value >= 1000 ? [(value / 1000).toFixed(2), "s"] : [value >= 100 ? value.toFixed(0) : value.toFixed(1), "ms"];
  node.replaceChildren(number, el("small", { textContent: unit }));
}

function ago(seconds) {
  return seconds < 1 ? "just now" : seconds < 60 ? Math.round(seconds) + " s ago" : Math.round(seconds / 60) + " min ago";
}

// What each status means to someone using the page; the server's own message follows it.
const EXPLAIN = {
  400: "This file cannot be classified.",
  401: "This server needs an API key.",
  413: "This file is too large.",
  429: "Too many of your images are waiting; try again shortly.",
  500: "The worker could not classify this image.",
  502: "This image crashed the model workers; it was not retried.",
  503: "The service cannot take the image right now.",
  504: "No answer in time.",
};

// With API keys on (API_KEYS), the server answers 401 until the page sends one: it asks once per tab and
// keeps the key for this tab only (sessionStorage), never in the page's address or a cookie.
let askedForKey = false;
async function apiFetch(url, options) {
  const send = () => {
    const headers = Object.assign({}, options.headers);
    const key = sessionStorage.getItem("imgq-api-key");
    if (key) headers.Authorization = "Bearer " + key;
    return fetch(url, Object.assign({}, options, { headers }));
  };
  let response = await send();
  if (response.status === 401 && !askedForKey) {
    askedForKey = true;
    const key = window.prompt("This server needs an API key:");
    if (key && key.trim()) {
      sessionStorage.setItem("imgq-api-key", key.trim());
      response = await send();
    }
  }
  return response;
}

// POST one file; resolves to {status, body}, body being the JSON answer or {error} made up here.
async function postImage(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  let response;
  try {
    response = await apiFetch("predict", { method: "POST", body: form, headers: { Accept: "application/json" } });
  } catch (err) {
    return { status: 0, body: { success: false, error: "the server could not be reached (" + err.message + ")" } };
  }
  let body;
  try {
    body = await response.json();
  } catch (err) {
    body = { success: false, error: "the server answered " + response.status + " " + response.statusText + " without JSON" };
  }
  return { status: response.status, body };
}

// ---- one image -----------------------------------------------------------------------------------
let currentFile = null;  // the last file the server classified: what a burst sends

function showError(status, message) {
  const box = $("error");
  box.replaceChildren(
    el("strong", { textContent: (status ? status + " · " : "") + (EXPLAIN[status] || "The request failed.") }),
    el("span", { textContent: message.charAt(0).toUpperCase() + message.slice(1) }));
  box.hidden = false;
  $("result").hidden = true;
}

function showResult(body) {
  $("error").hidden = true;
  $("model").textContent = body.model ? "· " + body.model : "";
  $("predictions").replaceChildren(...body.predictions.map((p) => {
    const pct = (p.probability * 100);
    return el("li", {},
      el("span", { className: "label", textContent: p.label.replace(/_/g, " "), title: p.label }),
      el("span", { className: "track" }, el("span", { className: "fill", style: "width:" + Math.max(pct, 0.3) + "%" })),
      el("span", { className: "prob", textContent: pct.toFixed(pct >= 10 ? 1 : 2) + " %" }));
  }));
  const t = body.timings || {};
  const other = Math.max(0, (t.total_ms || 0) - (t.prepare_ms || 0) - (t.queue_ms || 0) - (t.inference_ms || 0));
  const parts = [
    ["prepare", "prepare", t.prepare_ms, "the web server decodes and resizes the upload"],
    ["queue", "queue wait", t.queue_ms, "the job waits on the Redis list for a worker"],
    ["inference", "inference", t.inference_ms, "the model classifies the whole batch"],
    ["other", "the rest", other, "upload, Redis round trips, result delivery, response"],
  ];
  $("timing-bar").replaceChildren(...parts.map(([key, , value]) =>
    el("span", { style: `width:${t.total_ms ? (100 * (value || 0) / t.total_ms) : 0}%;background:var(--${key})`, title: key })));
  $("timings").replaceChildren(
    ...parts.map(([key, name, value, what]) => el("div", { title: what },
      el("dt", {}, el("span", { className: "swatch", style: `background:var(--${key})` }), name),
      el("dd", { textContent: ms(value) }))),
    el("div", {}, el("dt", { textContent: "total" }), el("dd", { textContent: ms(t.total_ms) })));
  $("batch").textContent = t.batch ? "· classified in a batch of " + t.batch : "";
  $("result").hidden = false;
}

async function classify(file) {
  $("file-name").textContent = file.name + " · " + size(file.size) + " · classifying…";
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (file.type.startsWith("image/")) {
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
  } else {
    preview.removeAttribute("src");
    preview.hidden = true;
  }
  $("drop").classList.toggle("has-image", !preview.hidden);
  const { status, body } = await postImage(file);
  $("file-name").textContent = file.name + " · " + size(file.size);
  if (status === 200 && body.success) {
    showResult(body);
    currentFile = file;
    $("burst-send").disabled = false;
    $("burst-status").textContent = `Ready to send copies of ${file.name}.`;
  } else {
    showError(status, body.error || "unknown error");
  }
}

function setUpUpload() {
  const drop = $("drop");
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";  // choosing the same file again classifies it again
    if (file) classify(file);
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
  });
}

// ---- a burst of copies ---------------------------------------------------------------------------
function setUpBurst() {
  $("burst-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!currentFile) return;
    const n = Math.min(BURST_MAX, Math.max(1, Math.floor(Number($("burst-n").value) || 1)));
    $("burst-n").value = n;
    $("burst-send").disabled = true;
    const counts = {};
    let sent = 0, answered = 0;
    const started = performance.now();
    const report = () => {
      const byStatus = Object.entries(counts).map(([s, c]) => `${c} × ${s === "0" ? "no connection" : s}`).join(", ");
      $("burst-status").textContent = `${n} copies: ${answered} answered${byStatus ? " (" + byStatus + ")" : ""}` +
        (answered === n ? ` in ${((performance.now() - started) / 1000).toFixed(1)} s.`
          : `, ${sent - answered} on their way, ${n - sent} waiting in this browser…`);
    };
    // A browser opens at most 6 connections to one server; the burst takes 5, so the live view keeps one.
    const sender = async () => {
      while (sent < n) {
        sent += 1;
        report();
        const { status } = await postImage(currentFile);
        counts[status] = (counts[status] || 0) + 1;
        answered += 1;
        report();
      }
    };
    await Promise.all(Array.from({ length: Math.min(BURST_CONNECTIONS, n) }, sender));
    $("burst-send").disabled = false;
  });
}

// ---- the live view -------------------------------------------------------------------------------
const queueHistory = [];  // [time s, queue length], newest last
const gone = new Map();   // worker id → {row data, when it vanished}: a stopped worker stays a while, struck out

function drawQueue(now, length) {
  queueHistory.push([now, length]);
  while (queueHistory.length && queueHistory[0][0] < now - HISTORY_S) queueHistory.shift();
  const top = Math.max(5, ...queueHistory.map(([, q]) => q));
  const points = queueHistory.map(([t, q]) =>
    `${(600 * (t - (now - HISTORY_S)) / HISTORY_S).toFixed(1)},${(86 - 82 * q / top).toFixed(1)}`);
  $("queue-line").setAttribute("points", points.join(" "));
  const x0 = points.length ? points[0].split(",")[0] : "600";
  $("queue-area").setAttribute("points", points.length ? `${x0},90 ${points.join(" ")} 600,90` : "");
  $("queue-max").textContent = "top of the chart: " + top + " jobs";
}

function drawWorkers(live, now) {
  const seen = new Set(live.workers.map((w) => w.id));
  for (const [id, entry] of gone) if (seen.has(id) || now - entry.since > 15) gone.delete(id);
  for (const w of (drawWorkers.last || [])) if (!seen.has(w.id) && !gone.has(w.id)) gone.set(w.id, { w, since: now });
  drawWorkers.last = live.workers;
  const rows = live.workers.map((w) => {
    const doing = w.state === "busy" ? `busy · ${w.inflight} job${w.inflight === 1 ? "" : "s"}`
      : w.state === "dead" ? "dead · no heartbeat (its jobs go back to the queue)" : "idle · waiting for jobs";
    return el("tr", {}, el("td", { className: "id", textContent: w.id, title: w.id }),
      el("td", { textContent: w.model || "–", title: w.model ? "" : "not recorded yet (the worker is starting)" }),
      el("td", {}, el("span", { className: "state " + w.state, textContent: doing })));
  });
  for (const { w } of gone.values()) {
    const how = w.state === "dead" ? "removed · a live worker put its jobs back" : "stopped · left the pool";
    rows.push(el("tr", { className: "gone" }, el("td", { className: "id", textContent: w.id }),
      el("td", { textContent: w.model || "–" }), el("td", { textContent: how })));
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 3, className: "state dead", textContent: "no worker: requests will wait, then get 504" })));
  $("workers").replaceChildren(...rows);
}

function drawBatches(live) {
  const batches = live.batches;
  const top = Math.max(1, ...batches.map((b) => b.size));
  $("batch-chart").replaceChildren(...batches.slice().reverse().map((b) =>
    el("span", { style: `height:${(100 * b.size / top).toFixed(0)}%`, title: `${b.size} jobs, ${ms(b.inference_ms)}` })));
  const s = live.batch_sizes;
  const which = s.count >= s.limit ? `the last ${s.count}` : `${s.count} in the last ${Math.round(live.window_s)} s`;
  $("batch-summary").textContent = s.count ? `· ${which}: mean size ${s.mean}, largest ${s.max}` : "";
  const rows = batches.slice(0, 8).map((b) => el("tr", {},
    el("td", { textContent: ago(live.time - b.t) }),
    el("td", { className: "id", textContent: b.worker, title: b.worker }),
    el("td", { textContent: b.size }),
    el("td", { textContent: ms(b.inference_ms) })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 4, className: "muted", textContent: "no batch since this page opened" })));
  $("batches").replaceChildren(...rows);
}

function drawLive(live) {
  $("queue-length").textContent = live.queue_length;
  // Both lanes count in the figure; the tile says how many of them are bulk work (lane "batch").
  const bulk = (live.lanes && live.lanes.batch) || 0;
  $("queue-length").title = bulk ? `${live.queue_length - bulk} interactive, ${bulk} in the batch lane` : "";
  $("queue-length").parentElement.classList.toggle("hot", live.queue_length > 0);
  $("live-workers").textContent = live.live_workers;
  $("rps").textContent = live.requests.per_second_5s.toFixed(1);
  $("rps-window").textContent = `${live.requests.per_second.toFixed(1)} over ${Math.round(live.window_s)} s`;
  tileMs($("p50"), live.requests.p50_ms);
  $("p50-window").textContent = `${live.requests.count} answer${live.requests.count === 1 ? "" : "s"} in ${Math.round(live.window_s)} s`;
  tileMs($("p95"), live.requests.p95_ms);
  drawQueue(live.time, live.queue_length);
  drawWorkers(live, live.time);
  drawBatches(live);
  const state = $("live-state");
  state.textContent = live.live_workers ? "live" : "no worker";
  state.className = "pill " + (live.live_workers ? "ok" : "bad");
}

async function poll() {
  const started = performance.now();
  let interval = 1;
  if (document.hidden) {  // a hidden tab costs Redis nothing: no refresh, and the server stops recording
    setTimeout(poll, 1000);
    return;
  }
  try {
    const response = await apiFetch("activity", { headers: { Accept: "application/json" }, cache: "no-store", priority: "high" });
    const live = await response.json();
    if (response.ok) {
      interval = live.interval || 1;
      drawLive(live);
    } else {
      $("live-state").textContent = live.error || "unavailable";
      $("live-state").className = "pill bad";
    }
  } catch (err) {
    $("live-state").textContent = "server unreachable";
    $("live-state").className = "pill bad";
  }
  // A fixed rhythm: the next refresh one interval after this one began, never overlapping.
  setTimeout(poll, Math.max(0, interval * 1000 - (performance.now() - started)));
}

setUpUpload();
setUpBurst();
poll();
