// The Tuneforge dashboard: jobs, their live curves and events, the model registry and a
// try-it box, all through the public /v1 API with the key the user signs in with.
import { barChart, confusionMatrix, lineChart } from "./charts.js";

// sessionStorage: the key lives as long as the tab and is never sent in a URL or a cookie.
const KEY_SLOT = "tuneforge.key";
const ACTIVE = ["validating_files", "queued", "running", "paused"];
const JOBS_REFRESH_MS = 3000;
const JOB_REFRESH_MS = 2000;
const EVENTS_POLL_MS = 2000;
// What to do about a failed job, by its error code; the message says what happened.
const FIXES = {
  time_limit_exceeded: "Train fewer epochs or rows, or raise TUNEFORGE_MAX_JOB_SECONDS, then start the job again.",
  worker_lost_repeatedly: "The worker kept dying (out of memory is the usual cause): check the worker's log, try a smaller batch_size or max_length, and start the job again.",
  training_failed: "Read the events below for the step it failed at; fix the data or hyperparameters it names and start a new job.",
};

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
  }
}

const key = () => sessionStorage.getItem(KEY_SLOT);
const authorization = () => ({ Authorization: `Bearer ${key()}` });

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = authorization();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, signal,
                                       body: body === undefined ? undefined : JSON.stringify(body) });
  const payload = await response.json().catch(() => null);
  if (response.status === 401) signOut("That key was refused; sign in again.");
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

// Every event of a job not in `known`, oldest first: the list is newest first, so pages are
// read until one reaches an event already shown.
async function newEvents(jobId, known, signal) {
  const fresh = [];
  let after = null;
  for (let page = 0; page < 100; page += 1) {
    const query = `limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`;
    const list = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?${query}`, { signal });
    const unseen = list.data.filter((event) => !known.has(event.id));
    fresh.push(...unseen);
    if (!list.has_more || unseen.length < list.data.length || list.data.length === 0) break;
    after = list.data[list.data.length - 1].id;
  }
  return fresh.reverse();
}

// Server-Sent Events read with fetch, so the key goes in a header (EventSource cannot send
// one). Resolves true when the server ended the stream (the job ended), false when this
// server answers without a stream, so the caller polls instead.
async function streamEvents(jobId, lastId, onEvent, signal) {
  const headers = { ...authorization(), Accept: "text/event-stream" };
  if (lastId) headers["Last-Event-ID"] = lastId;
  const response = await fetch(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?stream=true`,
                               { headers, signal });
  const type = response.headers.get("Content-Type") || "";
  if (response.status !== 200 || !type.startsWith("text/event-stream") || !response.body) {
    response.body?.cancel();
    return false;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return true;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

// ---------------------------------------------------------------- DOM helpers

function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "–");
const number = (value) => (typeof value === "number" ? Number(value.toPrecision(4)).toString() : String(value));
const jobLink = (id) => h("a", { href: `#/jobs/${encodeURIComponent(id)}` }, id);
const modelName = (versionId) => versionId.split(":")[1];

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function eta(job) {
  if (job.status !== "running" || !job.estimated_finish) return "–";
  return duration(job.estimated_finish - Date.now() / 1000);
}

function progressBar(progress) {
  const total = progress.total_steps || 0;
  return h("span", { class: "progress" },
           h("progress", { max: total || 1, value: Math.min(progress.step, total || 1) }),
           h("span", { class: "steps" }, total ? `${progress.step}/${total}` : "–"));
}

const badge = (status) => h("span", { class: `status status-${status}` }, status);

function notice(target, error) {
  target.replaceChildren(h("p", { class: "error", role: "alert" }, error.message || String(error)));
}

function table(headings, rows, attributes = {}) {
  return h("table", attributes, h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))),
           h("tbody", {}, rows));
}

// ---------------------------------------------------------------- jobs

function jobsView(main) {
  const body = h("div", { id: "jobs" }, h("p", {}, "Loading jobs…"));
  main.replaceChildren(h("h1", {}, "Fine-tuning jobs"), body);
  async function refresh() {
    try {
      const page = await api("/v1/fine_tuning/jobs?limit=50");
      if (page.data.length === 0) {
        body.replaceChildren(h("p", {}, "No jobs yet: start one with POST /v1/fine_tuning/jobs."));
        return;
      }
      body.replaceChildren(table(
        ["job", "model", "status", "progress", "ETA", "created"],
        page.data.map((job) => h("tr", { "data-job": job.id },
          h("td", {}, jobLink(job.id)), h("td", {}, job.model),
          h("td", {}, badge(job.status)), h("td", {}, progressBar(job.progress)),
          h("td", { class: "eta" }, eta(job)), h("td", {}, when(job.created_at)))),
        { class: "jobs-table" }));
    } catch (error) {
      notice(body, error);
    }
  }
  refresh();
  const timer = setInterval(refresh, JOBS_REFRESH_MS);
  return () => clearInterval(timer);
}

// Loss and evaluation curves from the job's metrics events: progress events carry
// `train_loss`, evaluations `loss` and the task's scores (a search tags each with its trial).
function curves(events) {
  const series = new Map();
  const add = (name, x, y) => {
    if (typeof y !== "number" || !Number.isFinite(y)) return;
    if (!series.has(name)) series.set(name, { name, points: [] });
    series.get(name).points.push([x, y]);
  };
  for (const event of events) {
    const data = event.data;
    if (event.type !== "metrics" || !data || typeof data.step !== "number") continue;
    const trial = typeof data.trial === "number" ? `trial ${data.trial + 1} ` : "";
    if ("train_loss" in data) add(`${trial}training loss`, data.step, data.train_loss);
    else {
      add(`${trial}evaluation loss`, data.step, data.loss);
      for (const score of ["macro_f1", "accuracy", "entity_f1", "perplexity"]) {
        add(`${trial}${score}`, data.step, data[score]);
      }
    }
  }
  const all = [...series.values()].map((s) => ({ ...s, points: s.points.sort((a, b) => a[0] - b[0]) }));
  const isLoss = (s) => s.name.endsWith("loss");
  return { loss: all.filter(isLoss), scores: all.filter((s) => !isLoss(s)) };
}

function eventRow(event) {
  return h("li", { class: `event level-${event.level}` },
           h("time", {}, new Date(event.created_at * 1000).toLocaleTimeString()),
           h("span", {}, event.message));
}

function failure(job) {
  if (!job.error) return null;
  const fix = job.error.fix || FIXES[job.error.code] || "Read the events below; fix what they name and start the job again.";
  return h("section", { class: "failure", role: "alert" },
           h("h2", {}, `Failed: ${job.error.code}`), h("p", {}, job.error.message),
           job.error.param ? h("p", {}, `Parameter: ${job.error.param}`) : null,
           h("p", { class: "fix" }, h("strong", {}, "Fix: "), fix));
}

function jobControls(job, onChange) {
  const status = h("span", { class: "form-status", role: "status" });
  const act = (action) => async (click) => {
    click.target.disabled = true;
    try {
      onChange(await api(`/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/${action}`, { method: "POST" }));
    } catch (error) {
      status.textContent = error.message;
      click.target.disabled = false;
    }
  };
  const button = (action, enabled) => h("button", { type: "button", "data-action": action,
                                                    disabled: !enabled, onclick: act(action) }, action);
  return h("div", { class: "controls" },
           button("cancel", ACTIVE.includes(job.status)),
           button("pause", ["queued", "running"].includes(job.status)),
           button("resume", job.status === "paused"), status);
}

function jobView(main, jobId) {
  const abort = new AbortController();
  const timers = [];
  const events = [];
  const known = new Set();
  const parts = Object.fromEntries(["summary", "charts", "evaluation", "checkpoints", "events"]
    .map((name) => [name, h("section", { id: `job-${name}` })]));
  main.replaceChildren(h("h1", {}, "Job ", h("code", {}, jobId)), ...Object.values(parts));
  let job = null;

  const drawCharts = () => {
    const { loss, scores } = curves(events);
    parts.charts.replaceChildren(
      h("div", { id: "loss-chart" }, lineChart(loss, { title: "Loss" })),
      h("div", { id: "score-chart" }, lineChart(scores, { title: "Evaluation" })));
  };
  const addEvents = (batch) => {
    const fresh = batch.filter((event) => !known.has(event.id));
    if (fresh.length === 0) return;
    for (const event of fresh) { known.add(event.id); events.push(event); }
    parts.events.replaceChildren(h("h2", {}, `Events (${events.length})`),
                                 h("ol", { class: "events", reversed: true }, events.slice().reverse().map(eventRow)));
    drawCharts();
  };
  const showJob = (next) => {
    job = next;
    parts.summary.replaceChildren(
      h("dl", { class: "facts" },
        h("dt", {}, "status"), h("dd", { id: "job-status" }, badge(job.status)),
        h("dt", {}, "model"), h("dd", {}, job.model),
        h("dt", {}, "task"), h("dd", {}, job.task),
        h("dt", {}, "progress"), h("dd", {}, progressBar(job.progress)),
        h("dt", {}, "ETA"), h("dd", {}, eta(job)),
        h("dt", {}, "created"), h("dd", {}, when(job.created_at)),
        h("dt", {}, "result"), h("dd", {}, job.fine_tuned_model
          ? h("a", { href: `#/models/${encodeURIComponent(modelName(job.fine_tuned_model))}` }, job.fine_tuned_model)
          : "–")),
      ...[jobControls(job, showJob), failure(job)].filter(Boolean));
  };
  const refresh = async () => {
    try {
      showJob(await api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`, { signal: abort.signal }));
      await showCheckpoints(parts.checkpoints, jobId, abort.signal);
      if (job.fine_tuned_model && !parts.evaluation.hasChildNodes()) {
        const version = await api(`/v1/models/${encodeURIComponent(job.fine_tuned_model)}`, { signal: abort.signal });
        parts.evaluation.replaceChildren(...evaluation(version.metrics || {}));
      }
    } catch (error) {
      if (!abort.signal.aborted) notice(parts.summary, error);
    }
  };
  const pause = () => new Promise((resolve) => { timers.push(setTimeout(resolve, EVENTS_POLL_MS)); });
  const active = () => !job || ACTIVE.includes(job.status);
  // Read before the fetch: a job that ends during it gets one more poll for its last events.
  const poll = async () => {
    const wasActive = active();
    try { addEvents(await newEvents(jobId, known, abort.signal)); } catch { /* polled again */ }
    if (wasActive && !abort.signal.aborted) timers.push(setTimeout(poll, EVENTS_POLL_MS));
  };
  const follow = async () => {
    addEvents(await newEvents(jobId, known, abort.signal));
    while (!abort.signal.aborted && active()) {
      const last = events.length ? events[events.length - 1].id : null;
      const ended = await streamEvents(jobId, last, (event) => addEvents([event]), abort.signal)
        .catch(() => null);  // a dropped connection: reconnect after the last event seen
      if (ended === false) return poll();
      await refresh();
      if (ended === null || active()) await pause();
    }
    addEvents(await newEvents(jobId, known, abort.signal));
  };

  drawCharts();
  refresh().then(() => follow()).catch((error) => { if (!abort.signal.aborted) notice(parts.events, error); });
  timers.push(setInterval(() => { if (job && ACTIVE.includes(job.status)) refresh(); }, JOB_REFRESH_MS));
  return () => { abort.abort(); timers.forEach((t) => { clearTimeout(t); clearInterval(t); }); };
}

async function showCheckpoints(target, jobId, signal) {
  const page = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/checkpoints?limit=100`, { signal });
  target.replaceChildren(h("h2", {}, `Checkpoints (${page.data.length})`), page.data.length === 0
    ? h("p", {}, "None yet: one is written at every evaluation.")
    : table(["step", "checkpoint", "metrics", "saved"], page.data.map((c) => h("tr", {},
        h("td", {}, String(c.step_number)), h("td", {}, h("code", {}, c.fine_tuned_model_checkpoint)),
        h("td", {}, metricSummary(c.metrics)), h("td", {}, when(c.created_at))))));
}

// ---------------------------------------------------------------- evaluation

function metricSummary(metrics) {
  const shown = ["accuracy", "micro_f1", "macro_f1", "entity_f1", "loss", "perplexity"]
    .filter((name) => typeof metrics[name] === "number");
  return shown.map((name) => `${name} ${number(metrics[name])}`).join(" · ") || "–";
}

// Per entity type F1: seqeval's `<TYPE>_f1` beside the overall `entity_f1`.
function entityScores(metrics) {
  return Object.entries(metrics)
    .filter(([name, value]) => name.endsWith("_f1")
            && !["entity_f1", "macro_f1", "micro_f1"].includes(name)
            && typeof value === "number")
    .map(([name, value]) => ({ name: name.slice(0, -3), value }));
}

function evaluation(metrics) {
  const views = [h("h2", {}, "Evaluation"), h("p", { class: "metrics" }, metricSummary(metrics))];
  if (metrics.confusion_matrix) {
    views.push(h("figure", { id: "confusion-matrix" }, confusionMatrix(metrics.confusion_matrix),
                 h("figcaption", {}, "Confusion matrix on the evaluation rows (rows: gold label, columns: predicted).")));
  }
  if (metrics.per_label) {
    const table = metrics.per_label;
    const perLabel = table.labels.map((name, i) => ({ name, value: table.f1[i] }));
    views.push(h("figure", { id: "label-f1" }, barChart(perLabel, { title: "F1 per label (at its tuned threshold)" })));
  }
  const perType = entityScores(metrics);
  if (perType.length) {
    views.push(h("figure", { id: "entity-f1" }, barChart(perType, { title: "F1 per entity type" })));
  }
  return views;
}

// ---------------------------------------------------------------- registry

function modelsView(main) {
  const body = h("div", {}, h("p", {}, "Loading models…"));
  main.replaceChildren(h("h1", {}, "Models"), body);
  api("/v1/models").then((list) => {
    const tuned = list.data.filter((m) => m.id.startsWith("ft:"));
    const byName = new Map();
    for (const version of tuned) byName.set(modelName(version.id), version);  // oldest first: latest wins
    body.replaceChildren(
      h("h2", {}, "Registered models"),
      byName.size === 0 ? h("p", {}, "None yet: a succeeded job registers a version.")
        : table(["name", "latest version", "task", "metrics"], [...byName].map(([name, latest]) => h("tr", {},
            h("td", {}, h("a", { href: `#/models/${encodeURIComponent(name)}` }, name)),
            h("td", {}, latest.id), h("td", {}, latest.task || "–"),
            h("td", {}, metricSummary(latest.metrics || {}))))),
      h("h2", {}, "Base models"),
      h("ul", {}, list.data.filter((m) => !m.id.startsWith("ft:")).map((m) => h("li", {}, h("code", {}, m.id)))));
  }).catch((error) => notice(body, error));
}

function lineage(version) {
  const files = (version.lineage.files || []).map((file) => h("div", {},
    `${file.filename} (${file.id}, ${file.rows} rows, sha256 ${String(file.sha256).slice(0, 12)}…)`));
  return h("dl", { class: "facts" },
           h("dt", {}, "base model"), h("dd", {}, version.lineage.base_model || "–"),
           h("dt", {}, "job"), h("dd", {}, version.lineage.job ? jobLink(version.lineage.job) : "–"),
           h("dt", {}, "training data"), h("dd", {}, files));
}

function aliasForm(model, onMoved) {
  const status = h("span", { class: "form-status", role: "status" });
  const alias = h("input", { name: "alias", required: true, placeholder: "production", maxlength: 64 });
  const version = h("select", { name: "version" },
                    model.versions.slice().reverse().map((v) => h("option", { value: v.id }, v.id)));
  const submit = async (event) => {
    event.preventDefault();
    try {
      const moved = await api(`/v1/registry/${encodeURIComponent(model.name)}/aliases/${encodeURIComponent(alias.value.trim())}`,
                              { method: "PUT", body: { version: version.value } });
      status.textContent = `${moved.alias} → ${moved.version}`;
      onMoved();
    } catch (error) {
      status.textContent = error.message;
    }
  };
  return h("form", { id: "alias-form", onsubmit: submit },
           h("label", {}, "alias ", alias), h("label", {}, "version ", version),
           h("button", { type: "submit" }, "Move alias"), status);
}

function highlighted(text, entities) {
  const parts = [];
  let at = 0;
  for (const entity of entities.slice().sort((a, b) => a.start - b.start)) {
    if (entity.start < at) continue;
    parts.push(text.slice(at, entity.start));
    parts.push(h("mark", { class: "entity", title: `${entity.entity_group || entity.entity} ${number(entity.score)}` },
                 text.slice(entity.start, entity.end),
                 h("sup", {}, entity.entity_group || entity.entity)));
    at = entity.end;
  }
  parts.push(text.slice(at));
  return h("p", { class: "entities" }, parts);
}

function prediction(task, text, output) {
  if (task === "text-classification") {
    return table(["label", "score"], output.map((item) => h("tr", {},
      h("td", { class: "label" }, item.label),
      h("td", {}, h("meter", { min: 0, max: 1, value: item.score }), ` ${item.score.toFixed(3)}`))),
      { class: "labels" });
  }
  if (task === "token-classification") return highlighted(text, output);
  return h("pre", {}, JSON.stringify(output, null, 2));
}

function tryIt(model) {
  const targets = [model.name, ...Object.keys(model.aliases).map((a) => `${model.name}@${a}`),
                   ...model.versions.slice().reverse().map((v) => v.id)];
  const target = h("select", { name: "model" }, targets.map((t) => h("option", { value: t }, t)));
  const input = h("textarea", { name: "inputs", rows: 3, required: true, placeholder: "Text to predict" });
  const result = h("div", { id: "prediction", "aria-live": "polite" });
  const submit = async (event) => {
    event.preventDefault();
    const text = input.value;
    try {
      const [output] = await api(`/v1/models/${encodeURIComponent(target.value)}/predict`,
                                 { method: "POST", body: { inputs: [text] } });
      const task = model.versions[model.versions.length - 1].task;
      result.replaceChildren(prediction(task, text, output));
    } catch (error) {
      notice(result, error);
    }
  };
  return h("section", { id: "try-it" }, h("h2", {}, "Try it"),
           h("form", { onsubmit: submit }, h("label", {}, "model ", target), input,
             h("button", { type: "submit" }, "Predict")), result);
}

function modelView(main, name) {
  const body = h("div", {}, h("p", {}, "Loading…"));
  main.replaceChildren(h("h1", {}, "Model ", h("code", {}, name)), body);
  const load = () => api(`/v1/registry/${encodeURIComponent(name)}`).then((model) => {
    body.replaceChildren(
      h("h2", {}, "Aliases"),
      table(["alias", "version"], Object.entries(model.aliases).map(([alias, version]) =>
        h("tr", { "data-alias": alias }, h("td", {}, alias), h("td", {}, version))), { id: "aliases" }),
      aliasForm(model, load),
      tryIt(model),
      h("h2", {}, "Versions"),
      ...model.versions.slice().reverse().map((version) => h("details", { class: "version", open: version === model.versions[model.versions.length - 1] },
        h("summary", {}, h("strong", {}, version.id), ` · ${version.task} · ${when(version.created_at)} · ${metricSummary(version.metrics)}`),
        lineage(version), ...evaluation(version.metrics))));
  }).catch((error) => notice(body, error));
  load();
}

// ---------------------------------------------------------------- sign-in and routing

let leave = null;

function signOut(message = "") {
  sessionStorage.removeItem(KEY_SLOT);
  render(message);
}

function signIn(main, message) {
  const input = h("input", { type: "password", name: "key", autocomplete: "off", required: true,
                             placeholder: "API key", "aria-label": "API key" });
  const status = h("p", { class: "error", role: "alert" }, message);
  const submit = async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_SLOT, input.value.trim());
    try {
      await api("/v1/fine_tuning/jobs?limit=1");
      render();
    } catch (error) {
      if (error.status !== 401) { sessionStorage.removeItem(KEY_SLOT); status.textContent = error.message; }
    }
  };
  main.replaceChildren(h("h1", {}, "Sign in"),
    h("form", { id: "sign-in", onsubmit: submit },
      h("p", {}, "Your API key stays in this tab and is sent only in the Authorization header."),
      input, h("button", { type: "submit" }, "Sign in")), status);
  input.focus();
}

function render(message = "") {
  if (leave) { leave(); leave = null; }
  const main = document.getElementById("main");
  const signedIn = Boolean(key());
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn) return signIn(main, message);
  const [, view, id] = (location.hash || "#/jobs").split("/").map(decodeURIComponent);
  if (view === "jobs" && id) leave = jobView(main, id);
  else if (view === "models" && id) leave = modelView(main, id);
  else if (view === "models") leave = modelsView(main);
  else leave = jobsView(main);
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => render());
render();
