// nowcast viewer: the observed radar loop beside each model's forecast loop, and for a model that
// forecasts probabilities (its "outputs" in v1/models list "probability") the map of P(rate >= t) at
// the threshold t picked in the header, beside its forecast.
//
// Plain JavaScript, no build step, no CDN. It is a client of the public /v1 API and nothing else:
//   GET  v1/products                      products, their newest time, grid, graticule, colour scale
//   GET  v1/products/{p}/times            init times to pick from
//   GET  v1/products/{p}/frame?time=T     one observed frame (PNG, transparent where dry)
//   GET  v1/models                        the served models
//   POST v1/forecast/frames               a forecast (POST v1/forecast's body) as one PNG per lead; with
//                                         "output": "probability" and one threshold, its probability maps
//   GET  v1/skill?product=P&hours=24      CSI at 1 mm/h against lead per model, last 24 h (live verification)
// with the API key (X-API-Key) when the user gave one. URLs are relative, so the page also works
// behind a reverse proxy that serves the service under a prefix.
"use strict";

const params = new URLSearchParams(location.search);
/** seconds between polls of v1/products (a new frame starts a new forecast); ?poll=N overrides */
const POLL_S = Math.max(1, Number(params.get("poll")) || 30);
/** milliseconds per loop frame while playing; ?frame_ms=N overrides */
const FRAME_MS = Math.max(50, Number(params.get("frame_ms")) || 700);
/** how much observed history and forecast the loops show */
const LOOP_MINUTES = 60;
/** the skill panel's window: the hours of verified forecasts before the product's newest frame */
const SKILL_HOURS = 24;
const STORAGE = { key: "nowcast.apiKey", models: "nowcast.models", product: "nowcast.product",
  threshold: "nowcast.threshold" };
/** thresholds (mm/h) a probability map may be drawn at: those live verification scores (GET v1/skill's brier) */
const THRESHOLDS = [1, 5, 10];
const STORED_THRESHOLD = localStorage.getItem(STORAGE.threshold);

const $ = (selector) => document.querySelector(selector);

const state = {
  key: localStorage.getItem(STORAGE.key) || "",
  products: [],
  scale: null,
  probabilityScale: null, // the colours of probability maps (v1/products)
  // mm/h of the probability maps, as text, or "off"
  threshold: [...THRESHOLDS.map(String), "off"].includes(STORED_THRESHOLD) ? STORED_THRESHOLD : "1",
  product: null,          // the ProductInfo shown
  models: [],             // ModelInfo of every served model
  selected: [],           // names of the models shown
  init: "latest",         // "latest" or an ISO init time
  initTime: null,         // the init time (ms since epoch) of the loops shown
  step: 5,                // minutes
  history: 12,            // observed frames up to and including the init time
  leads: 12,              // forecast lead steps
  timeline: [],           // valid times (ms) of the loop
  index: 0,
  observed: new Map(),    // "product|iso" -> {url} | {missing: message} | {pending: true}
  forecasts: new Map(),   // "product|model|iso|leads|output" -> {frames, times} | {error} | {pending: true}
  timer: null,
  poller: null,
  generation: 0,
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** fetch() on the API with the key; a non-2xx answer becomes an ApiError carrying the service's message */
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("X-API-Key", state.key);
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-cache" });
  } catch (err) {
    throw new ApiError(0, "network", `the service does not answer (${err.message})`);
  }
  if (!response.ok) {
    let code = `http_${response.status}`;
    let message = response.statusText || code;
    try {
      const body = await response.json();
      code = body.error.code;
      message = body.error.message;
    } catch (_) { /* not the service's JSON error: keep the status line */ }
    throw new ApiError(response.status, code, message);
  }
  return response;
}

// -- times (always UTC) ------------------------------------------------------------------------

const parseTime = (iso) => Date.parse(iso);
const isoTime = (ms) => new Date(ms).toISOString().replace(".000Z", "Z");
const utcLabel = (ms) => new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC";
const minutes = (m) => (m > 0 ? `+${m}` : `${m}`) + " min";

// -- messages ------------------------------------------------------------------------------------

function say(text, isError = false) {
  const box = $("#message");
  box.textContent = text || "";
  box.hidden = !text;
  box.classList.toggle("error", isError);
}

function explain(err) {
  if (err.status === 401) {
    document.body.dataset.state = "needs-key";
    $("#api-key").focus();
    return state.key ? `The API key was refused: ${err.message}.` :
      "This service needs an API key: enter it above (it is kept in this browser only).";
  }
  return err.message;
}

// -- loading ---------------------------------------------------------------------------------------

async function loadProducts() {
  const body = await (await api("v1/products")).json();
  state.products = body.products;
  state.scale = body.colour_scale;
  state.probabilityScale = body.probability_scale || null;
  return body;
}

async function loadModels() {
  state.models = (await (await api("v1/models")).json()).models;
  const served = state.models.map((m) => m.name);
  let wanted = [];
  try { wanted = JSON.parse(localStorage.getItem(STORAGE.models) || "[]"); } catch (_) { wanted = []; }
  state.selected = wanted.filter((name) => served.includes(name));
  if (!state.selected.length) state.selected = served.slice(0, 2);
}

async function loadInitTimes() {
  const select = $("#init");
  const product = state.product.name;
  let times = [];
  try {
    times = (await (await api(`v1/products/${encodeURIComponent(product)}/times?limit=288`)).json()).times;
  } catch (err) {
    say(explain(err), true);
  }
  if (state.product?.name !== product) return;
  select.replaceChildren(new Option("latest (follows new frames)", "latest"));
  for (const iso of times.slice().reverse()) select.add(new Option(utcLabel(parseTime(iso)), iso));
  select.value = times.includes(state.init) ? state.init : "latest";
  state.init = select.value;
}

function observedKey(ms) { return `${state.product.name}|${isoTime(ms)}`; }
/** ``threshold`` null: the deterministic forecast; a number: its probability map at that threshold */
function forecastKey(model, leads, threshold = null) {
  return `${state.product.name}|${model}|${isoTime(state.initTime)}|${leads}|${threshold === null ? "" : `p${threshold}`}`;
}

/** Whether a model (a v1/models entry) forecasts probabilities. */
function offersProbability(info) { return Boolean(info && (info.outputs || []).includes("probability")); }

/** The threshold (mm/h) of the probability maps shown, or null when they are off. */
function shownThreshold() { return state.threshold === "off" ? null : Number(state.threshold); }

/** The shown models whose probability map is drawn beside their forecast. */
function probabilityModels() {
  if (shownThreshold() === null) return [];
  return state.selected.filter((name) => offersProbability(state.models.find((m) => m.name === name)));
}

async function loadObserved(ms, generation) {
  const key = observedKey(ms);
  const known = state.observed.get(key);
  if (known && !known.missing) return;
  if (ms > parseTime(state.product.last_time)) {
    state.observed.set(key, { missing: "not observed yet" });
    return;
  }
  state.observed.set(key, { pending: true });
  try {
    const path = `v1/products/${encodeURIComponent(state.product.name)}/frame?time=${encodeURIComponent(isoTime(ms))}`;
    const blob = await (await api(path)).blob();
    state.observed.set(key, { url: URL.createObjectURL(blob) });
  } catch (err) {
    state.observed.set(key, { missing: err.status === 404 ? "no frame at this time in the archive" : explain(err) });
  }
  if (generation === state.generation) render();
}

/**
 * Lead steps (at the product's step) worth asking of a model: a network only what it was trained
 * for (trained_output_steps at its own step_minutes), a baseline up to the service's max_lead_steps.
 * Asking a network for more makes it roll forward on its own output (slow, and past what it learned).
 */
function modelLeads(info, productStep) {
  if (!info) return Infinity;
  if (!info.trained_output_steps) return info.max_lead_steps;
  const minutes = info.trained_output_steps * (info.step_minutes || productStep);
  return Math.max(1, Math.min(info.max_lead_steps, Math.floor(minutes / productStep + 1e-9)));
}

/** A model's forecast as one PNG per lead; with ``threshold`` (mm/h), its map of P(rate >= threshold). */
async function loadForecast(model, generation, threshold = null) {
  const info = state.models.find((m) => m.name === model);
  const leads = Math.min(state.leads, modelLeads(info, state.step));
  const key = forecastKey(model, leads, threshold);
  if (state.forecasts.has(key) && !state.forecasts.get(key).error) return;
  state.forecasts.set(key, { pending: true });
  render();
  try {
    const body = { model, product: state.product.name, time: isoTime(state.initTime), lead_steps: leads };
    if (threshold !== null) Object.assign(body, { output: "probability", thresholds: [threshold] });
    const answer = await (await api("v1/forecast/frames", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    })).json();
    state.forecasts.set(key, { frames: answer.frames, times: answer.times.map(parseTime) });
  } catch (err) {
    state.forecasts.set(key, { error: explain(err) });
  }
  if (generation === state.generation) render();
}

/** Forget pictures outside the loop shown, so a service watched all day does not fill memory. */
function prune() {
  const wanted = new Set(state.timeline.map(observedKey));
  for (const [key, entry] of state.observed) {
    if (!wanted.has(key)) {
      if (entry.url) URL.revokeObjectURL(entry.url);
      state.observed.delete(key);
    }
  }
  const prefix = `${state.product.name}|`;
  const init = `|${isoTime(state.initTime)}|`;
  for (const key of state.forecasts.keys()) {
    if (!key.startsWith(prefix) || !key.includes(init)) state.forecasts.delete(key);
  }
}

/** Rebuild the loops for the current product, models and init time, and fetch what they show. */
function refresh({ keepLead = true } = {}) {
  const product = state.product;
  if (!product || !product.last_time) {
    say(product ? `Product ${product.name} has no frames yet.` : "The archive has no products yet.");
    return;
  }
  const generation = ++state.generation;
  const oldLead = state.index - (state.history - 1);
  state.step = product.step_minutes || 5;
  state.history = Math.max(1, Math.round(LOOP_MINUTES / state.step));
  const maxLead = Math.max(1, ...state.models.filter((m) => state.selected.includes(m.name))
    .map((m) => modelLeads(m, state.step)));
  state.leads = Math.max(1, Math.min(Math.round(LOOP_MINUTES / state.step), maxLead));
  state.initTime = parseTime(state.init === "latest" ? product.last_time : state.init);
  const stepMs = state.step * 60000;
  state.timeline = [];
  for (let k = -(state.history - 1); k <= state.leads; k++) state.timeline.push(state.initTime + k * stepMs);
  const slider = $("#lead-slider");
  slider.max = String(state.timeline.length - 1);
  const lead = keepLead ? Math.max(-(state.history - 1), Math.min(state.leads, oldLead)) : 0;
  setIndex(state.history - 1 + lead);
  prune();
  buildPanels();
  render();
  for (const ms of state.timeline) loadObserved(ms, generation);
  for (const model of state.selected) loadForecast(model, generation);
  for (const model of probabilityModels()) loadForecast(model, generation, shownThreshold());
}

// -- drawing ---------------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function drawGraticule(panel) {
  const { nx, ny } = state.product.grid;
  const svg = panel.querySelector("svg");
  svg.setAttribute("viewBox", `0 0 ${nx} ${ny}`);
  svg.replaceChildren();
  const labels = panel.querySelector(".labels");
  labels.replaceChildren();
  for (const line of state.product.graticule) {
    for (const segment of line.segments) {
      const polyline = document.createElementNS(SVG, "polyline");
      polyline.setAttribute("points", segment.map(([c, r]) => `${c},${r}`).join(" "));
      polyline.dataset.kind = line.kind;
      svg.append(polyline);
    }
    // parallels are labelled on the left edge, meridians on the bottom one: keep them apart in the corner
    if (line.label_at && !(line.kind === "lat" && line.label_at[1] > 0.95 * ny)) {
      const label = document.createElement("span");
      label.textContent = line.label;
      const [c, r] = line.label_at;
      label.style.left = `${Math.min(92, Math.max(0, (100 * c) / nx))}%`;
      label.style.top = `${Math.min(100, Math.max(6, (100 * r) / ny))}%`;
      labels.append(label);
    }
  }
}

/** "observed", then each shown model, followed by "<model>:probability" where its probability map is drawn. */
function panelNames() {
  const withMaps = probabilityModels();
  return ["observed", ...state.selected.flatMap((m) => (withMaps.includes(m) ? [m, `${m}:probability`] : [m]))];
}

function buildPanels() {
  const container = $("#panels");
  const names = panelNames();
  container.style.setProperty("--columns", String(names.length));
  container.style.setProperty("--aspect", String(state.product.grid.nx / state.product.grid.ny));
  const existing = [...container.children].map((p) => p.dataset.panel).join("|");
  if (existing === names.join("|") && container.dataset.product === state.product.name &&
      container.dataset.threshold === state.threshold) return;
  container.dataset.product = state.product.name;
  container.dataset.threshold = state.threshold;
  container.replaceChildren();
  for (const name of names) {
    const panel = $("#panel-template").content.firstElementChild.cloneNode(true);
    panel.dataset.panel = name;
    const probability = name.endsWith(":probability");
    panel.dataset.model = probability ? name.slice(0, -":probability".length) : name;
    panel.dataset.output = probability ? "probability" : name === "observed" ? "observed" : "deterministic";
    const caption = name === "observed" ? "observed radar" : probability ? `P(rate ≥ ${shownThreshold()} mm/h)` : name;
    panel.querySelector(".name").textContent = caption;
    panel.querySelector("figcaption").title = probability ? `${panel.dataset.model}: ${caption}` : caption;
    panel.querySelector(".map").style.setProperty("--aspect", String(state.product.grid.nx / state.product.grid.ny));
    drawGraticule(panel);
    container.append(panel);
  }
}

/** Show one picture (or why there is none) in a panel; data-* say what is shown, for tests and tools. */
function show(panel, { url = null, kind, note, text = "" }, ms) {
  const img = panel.querySelector("img");
  if (url) {
    if (img.getAttribute("src") !== url) img.src = url;
    img.hidden = false;
  } else {
    img.hidden = true;
    img.removeAttribute("src");
  }
  img.dataset.time = isoTime(ms);
  panel.dataset.kind = kind;
  panel.dataset.time = isoTime(ms);
  panel.querySelector(".kind").textContent = note;
  panel.querySelector(".placeholder").textContent = url ? "" : text;
  panel.querySelector(".valid").textContent = `valid ${utcLabel(ms)}`;
}

function render() {
  if (!state.product || !state.timeline.length) return;
  const ms = state.timeline[state.index];
  const lead = (state.index - (state.history - 1)) * state.step;
  const observed = state.observed.get(observedKey(ms)) || { pending: true };
  const asObserved = (entry, note) => (entry.url ? { url: entry.url, kind: "observed", note } :
    entry.pending ? { kind: "loading", note, text: "loading…" } : { kind: "missing", note, text: entry.missing });
  for (const panel of document.querySelectorAll("#panels .panel")) {
    const name = panel.dataset.model;
    const probability = panel.dataset.output === "probability";
    if (name === "observed") {
      show(panel, asObserved(observed, lead > 0 ? "(what happened)" : ""), ms);
    } else if (lead <= 0 && probability) {
      show(panel, { kind: "missing", note: "", text: "probabilities are forecast for the leads after the init time" },
        ms);
    } else if (lead <= 0) {
      show(panel, asObserved(observed, "observed, before init"), ms);
    } else {
      const info = state.models.find((m) => m.name === name);
      const leads = Math.min(state.leads, modelLeads(info, state.step));
      const threshold = probability ? shownThreshold() : null;
      const entry = state.forecasts.get(forecastKey(name, leads, threshold)) || { pending: true };
      const k = Math.round(lead / state.step) - 1;
      if (entry.frames && k < entry.frames.length) {
        show(panel, probability ? { url: entry.frames[k], kind: "probability", note: `${name} ${minutes(lead)}` } :
          { url: entry.frames[k], kind: "forecast", note: `forecast ${minutes(lead)}` }, ms);
      } else if (entry.frames) {
        show(panel, { kind: "missing", note: "", text: `beyond ${name}'s longest lead` }, ms);
      } else if (entry.error) {
        show(panel, { kind: "error", note: "", text: entry.error }, ms);
      } else {
        show(panel, { kind: "loading", note: "", text: "computing the forecast…" }, ms);
      }
    }
  }
  $("#lead-label").textContent = `lead ${minutes(lead)} · valid ${utcLabel(ms)} · init ${utcLabel(state.initTime)}`;
}

/** One legend class: a colour box and its tick label (``extra`` adds a CSS class: special, end). */
function appendSwatch(legend, colour, tick, extra = "") {
  const item = document.createElement("div");
  item.className = `class ${extra}`;
  const box = document.createElement("div");
  box.className = "swatch";
  box.style.background = colour;
  const label = document.createElement("span");
  label.className = "tick";
  label.textContent = tick;
  item.append(box, label);
  legend.append(item);
}

function drawLegend() {
  const scale = state.scale;
  const legend = $("#legend");
  legend.replaceChildren();
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = `rain rate (${scale.units})`;
  legend.append(title);
  const swatch = (colour, tick, extra = "") => appendSwatch(legend, colour, tick, extra);
  scale.colours.forEach((colour, k) => swatch(colour, String(scale.levels[k])));
  swatch(scale.over, `${scale.max_mm_h}+`);
  swatch("#ffffff", `dry (< ${scale.levels[0]})`, "special");
  swatch(scale.nodata, "no data", "special");
  drawProbabilityLegend();
}

/** The probability maps' legend, 0 to 1 (shown while a map is): blank under the first class, grey for no data. */
function drawProbabilityLegend() {
  const legend = $("#probability-legend");
  const scale = state.probabilityScale;
  const threshold = shownThreshold();
  legend.hidden = !scale || !probabilityModels().length;
  legend.replaceChildren();
  if (legend.hidden) return;
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = `probability of rain rate ≥ ${threshold} mm/h`;
  legend.append(title);
  const swatch = (colour, tick, extra = "") => appendSwatch(legend, colour, tick, extra);
  swatch("#ffffff", "0");
  scale.colours.forEach((colour, k) => swatch(colour, String(scale.levels[k])));
  swatch("transparent", "1", "end"); // the top of the last class: a tick, no colour of its own
  swatch(scale.nodata, "no data", "special");
}

/** The threshold picker: shown when a served model forecasts probabilities. */
function fillThresholds() {
  const picker = $("#threshold-picker");
  picker.hidden = !state.models.some(offersProbability);
  $("#threshold").value = state.threshold;
}

// -- controls ---------------------------------------------------------------------------------------

function setIndex(index) {
  state.index = Math.max(0, Math.min(state.timeline.length - 1, index));
  $("#lead-slider").value = String(state.index);
}

function play(on) {
  const button = $("#play");
  if (on && !state.timer) {
    state.timer = setInterval(() => {
      setIndex(state.index + 1 >= state.timeline.length ? 0 : state.index + 1);
      render();
    }, FRAME_MS);
  } else if (!on && state.timer) {
    clearInterval(state.timer);
    state.timer = null;
  }
  button.setAttribute("aria-pressed", String(Boolean(state.timer)));
  button.textContent = state.timer ? "❚❚ Pause" : "▶ Play";
}

function showLatest() {
  const checked = new Date().toISOString().slice(11, 19);
  $("#latest").textContent = state.product?.last_time ?
    `latest frame ${utcLabel(parseTime(state.product.last_time))} · checked ${checked} UTC` : "";
  document.body.dataset.lastTime = state.product?.last_time || "";
}

function fillProducts() {
  const select = $("#product");
  select.replaceChildren(...state.products.map((p) => new Option(p.name, p.name)));
  const wanted = state.product?.name || localStorage.getItem(STORAGE.product);
  const chosen = state.products.find((p) => p.name === wanted) || state.products[0] || null;
  state.product = chosen;
  if (chosen) select.value = chosen.name;
}

function fillModels() {
  const box = $("#models");
  box.querySelectorAll("label").forEach((l) => l.remove());
  for (const model of state.models) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = model.name;
    input.checked = state.selected.includes(model.name);
    input.addEventListener("change", () => {
      state.selected = [...box.querySelectorAll("input:checked")].map((i) => i.value);
      localStorage.setItem(STORAGE.models, JSON.stringify(state.selected));
      refresh();
      drawProbabilityLegend();
    });
    label.append(input, ` ${model.name}`);
    label.title = `${model.architecture} (${model.kind}), ${model.input_steps} input frames`;
    box.append(label);
  }
}

// -- skill -----------------------------------------------------------------------------------------

/** CSI-by-lead series from GET v1/skill, read leniently: {models: [{model|name, scores: [{lead_minutes,
 *  csi: number | {threshold: number}}]}]} or {models: {name: [...]}}; the threshold shown is 1 mm/h when given. */
function skillSeries(body) {
  const entries = Array.isArray(body.models) ? body.models.map((m) => [m.model || m.name, m.scores || m.leads || []]) :
    Object.entries(body.models || {}).map(([name, m]) => [name, Array.isArray(m) ? m : (m.scores || [])]);
  const series = [];
  for (const [name, scores] of entries) {
    const points = [];
    for (const s of scores) {
      let csi = s.csi;
      if (csi && typeof csi === "object") csi = csi["1.0"] ?? csi["1"] ?? Object.values(csi)[0];
      if (typeof s.lead_minutes === "number" && typeof csi === "number") points.push([s.lead_minutes, csi]);
    }
    if (points.length) series.push({ name, points: points.sort((a, b) => a[0] - b[0]) });
  }
  return series;
}

function drawSkill(series) {
  const width = 560, height = 260, left = 44, right = 130, top = 12, bottom = 36;
  const maxLead = Math.max(...series.flatMap((s) => s.points.map((p) => p[0])), 5);
  const x = (lead) => left + ((width - left - right) * lead) / maxLead;
  const y = (csi) => top + (height - top - bottom) * (1 - csi);
  const colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
    return el;
  };
  for (const csi of [0, 0.25, 0.5, 0.75, 1]) {
    add("line", { x1: left, x2: width - right, y1: y(csi), y2: y(csi), stroke: "#e4e7eb" });
    add("text", { x: left - 6, y: y(csi) + 4, "text-anchor": "end" }, csi.toFixed(2));
  }
  const tick = maxLead > 90 ? 30 : 15;
  for (let lead = 0; lead <= maxLead; lead += tick) {
    add("text", { x: x(lead), y: height - bottom + 16, "text-anchor": "middle" }, String(lead));
  }
  add("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle" }, "lead (min)");
  series.forEach((s, k) => {
    const colour = colours[k % colours.length];
    add("polyline", { points: s.points.map(([l, c]) => `${x(l)},${y(c)}`).join(" "), fill: "none", stroke: colour,
      "stroke-width": 2, "data-model": s.name });
    const row = top + 14 + 16 * k; // a swatch and the name, in the line's colour (CSS would override fill=)
    add("line", { x1: width - right + 8, x2: width - right + 24, y1: row - 4, y2: row - 4, stroke: colour,
      "stroke-width": 3 });
    add("text", { x: width - right + 30, y: row, style: `fill: ${colour}` }, s.name);
  });
  return svg;
}

async function loadSkill() {
  const body = $("#skill-body");
  if (!state.product) return;
  const product = state.product.name;
  try {
    const answer = await (await api(`v1/skill?product=${encodeURIComponent(product)}&hours=${SKILL_HOURS}`)).json();
    if (state.product.name !== product) return; // the user picked another product meanwhile
    const series = skillSeries(answer);
    if (!series.length) {
      const waiting = Object.values(answer.pending || {}).reduce((a, b) => a + b, 0);
      body.textContent = "no skill data yet" + (waiting ? ` (${waiting} forecasts waiting for their observations)` : "");
    } else {
      const cases = (answer.models || []).map((m) => `${m.model}: ${m.n_cases}`).join(", ");
      const caption = document.createElement("p");
      caption.textContent = `CSI at 1 mm/h of the forecasts made in the ${answer.hours} h to ` +
        `${utcLabel(parseTime(answer.end))}, verified against the radar (cases: ${cases})`;
      body.replaceChildren(drawSkill(series), caption);
    }
    body.dataset.state = series.length ? "chart" : "empty";
  } catch (err) {
    body.textContent = err.status === 404 ? "no skill data yet" : `skill unavailable: ${explain(err)}`;
    body.dataset.state = err.status === 404 ? "empty" : "error";
  }
}

// -- start and poll -----------------------------------------------------------------------------------

/** Poll v1/products; a new newest frame moves a "latest" loop to the new init time. */
async function poll() {
  if (!state.product) return;
  const before = state.product.last_time;
  try {
    await loadProducts();
  } catch (err) {
    say(`Could not check for new frames: ${explain(err)}`, true);
    return;
  }
  state.product = state.products.find((p) => p.name === state.product.name) || state.product;
  if (state.product.last_time !== before) {
    say("");
    await loadInitTimes();
    refresh();
  }
  loadSkill(); // forecasts are verified as their leads come in, not only when a frame arrives
  showLatest();
}

async function start() {
  document.body.dataset.state = "loading";
  say("");
  try {
    await loadProducts();
    await loadModels();
  } catch (err) {
    say(explain(err), true);
    return;
  }
  drawLegend();
  fillProducts();
  fillModels();
  fillThresholds();
  showLatest();
  if (state.product) await loadInitTimes();
  refresh({ keepLead: false });
  loadSkill();
  clearInterval(state.poller);
  state.poller = setInterval(poll, POLL_S * 1000);
  document.body.dataset.state = "ready";
}

function wire() {
  $("#api-key").value = state.key;
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#api-key").value.trim();
    if (state.key) localStorage.setItem(STORAGE.key, state.key);
    else localStorage.removeItem(STORAGE.key);
    state.forecasts.clear();
    start();
  });
  $("#product").addEventListener("change", async (event) => {
    state.product = state.products.find((p) => p.name === event.target.value);
    localStorage.setItem(STORAGE.product, state.product.name);
    state.init = "latest";
    await loadInitTimes();
    refresh({ keepLead: false });
    loadSkill();
  });
  $("#init").addEventListener("change", (event) => {
    state.init = event.target.value;
    refresh({ keepLead: false });
  });
  $("#threshold").addEventListener("change", (event) => {
    state.threshold = event.target.value;
    localStorage.setItem(STORAGE.threshold, state.threshold);
    refresh();
    drawProbabilityLegend();
  });
  $("#lead-slider").addEventListener("input", (event) => {
    setIndex(Number(event.target.value));
    render();
  });
  $("#play").addEventListener("click", () => play(!state.timer));
  document.addEventListener("keydown", (event) => {
    if (event.key === " " && event.target === document.body) {
      event.preventDefault();
      play(!state.timer);
    }
  });
}

wire();
start();
