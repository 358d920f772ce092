// The playground: built only on the public API (every URL relative to the page, so it works under
// a gateway prefix), images fetched with the API key header and shown as blob URLs.
const $ = (id) => document.getElementById(id);
const KEY = "latentserve.apiKey";
const SLIDERS = 6;  // top directions with a slider
const MAP = { extent: 3, steps: 8, scale: 2, pad: 2, size: 28 };
const state = { models: [], model: null, directions: [], lastSeed: 0, controllers: {}, urls: new Map(), mapModel: null };
let countdown = null;

class ApiError extends Error {
  constructor(status, message, retryAfter = 0) { super(message); this.status = status; this.retryAfter = retryAfter; }
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, "X-API-Key": key } : extra;
}

// fetch one API path; throws ApiError with the API's own message, or AbortError when superseded
async function api(path, { method = "GET", json, body, type, signal, raw = false } = {}) {
  const init = { method, signal, headers: authHeaders() };
  if (json !== undefined) { init.body = JSON.stringify(json); init.headers["Content-Type"] = "application/json"; }
  else if (body !== undefined) { init.body = body; init.headers["Content-Type"] = type || "application/octet-stream"; }
  let r;
  try { r = await fetch(path, init); } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "the service cannot be reached");
  }
  if (!r.ok) {
    let message = `HTTP ${r.status}`;
    try { message = (await r.json()).error.message || message; } catch { /* not JSON */ }
    throw new ApiError(r.status, message, Number(r.headers.get("Retry-After")) || 0);
  }
  if (raw) return r;
  return (r.headers.get("Content-Type") || "").startsWith("application/json") ? r.json() : r.blob();
}

function say(text) {
  if (countdown) return;  // a 429's countdown stays until it ends
  $("status").className = "";
  $("status").textContent = text;
}

function showError(e) {
  if (e.name === "AbortError") return;
  const el = $("status");
  clearInterval(countdown);
  countdown = null;
  el.className = "error";
  if (e.status === 429) {
    let left = Math.max(1, e.retryAfter);
    const tick = () => {
      if (left <= 0) { clearInterval(countdown); countdown = null; el.className = ""; el.textContent = "You can retry now."; return; }
      el.textContent = `Busy (429): ${e.message} Retry in ${left} s.`;
      left -= 1;
    };
    tick();
    countdown = setInterval(tick, 1000);
  } else if (e.status === 401) {
    el.textContent = "This service needs an API key: enter it above and press Enter.";
    $("api-key").focus();
  } else if (e.status === 503) {
    el.textContent = `Not ready (503): ${e.message}`;
  } else {
    el.textContent = `${e.status ? `Error ${e.status}` : "Error"}: ${e.message}`;
  }
}

// one request per slot: a new one aborts the stale one (its answer would be out of date)
async function run(slot, work) {
  state.controllers[slot]?.abort();
  const controller = new AbortController();
  state.controllers[slot] = controller;
  try { return await work(controller.signal); } catch (e) { showError(e); return undefined; } finally {
    if (state.controllers[slot] === controller) delete state.controllers[slot];
  }
}

function show(img, blob) {
  const old = state.urls.get(img);
  if (old) URL.revokeObjectURL(old);
  const url = URL.createObjectURL(blob);
  state.urls.set(img, url);
  img.src = url;
}

const modelPath = (name) => `v1/models/${encodeURIComponent(name)}`;
const num = (id) => Number($(id).value);
const label = () => $("label").value;  // "" = drawn from the seed

function samplePath() {
  const q = new URLSearchParams({ n: num("n"), seed: num("seed"), columns: num("columns"), truncation: $("truncation").value, scale: num("scale") });
  if (label() !== "") q.set("label", label());
  return `${modelPath(state.model.name)}/samples.png?${q}`;
}

function curlFor(path) {
  const url = new URL(path, document.baseURI).href;
  const key = sessionStorage.getItem(KEY) ? " -H \"X-API-Key: $LATENTSERVE_API_KEY\"" : "";
  return `curl -fo samples.png${key} '${url}'`;
}

async function loadSamples() {
  if (!state.model) return;
  const path = samplePath();
  $("curl").textContent = curlFor(path);
  await run("samples", async (signal) => {
    show($("samples-img"), await api(path, { signal }));
    if (!performance.getEntriesByName("first-samples").length) performance.mark("first-samples");
    say(`${state.model.name}: seed ${num("seed")}`);
  });
  await loadEdit();
}

function startBody() {
  const body = { seed: num("seed"), truncation: Number($("truncation").value) };
  if (label() !== "") body.label = Number(label());
  return body;
}

async function loadEdit() {
  const moves = [...document.querySelectorAll("#sliders input")]
    .map((s) => ({ direction: Number(s.dataset.direction), amount: Number(s.value) }))
    .filter((m) => m.amount !== 0);
  await run("edit", async (signal) => {
    show($("edit-img"), await api(`${modelPath(state.model.name)}/edit`, { method: "POST", json: { ...startBody(), moves, scale: 4 }, signal }));
  });
}

let editTimer = null;
function editSoon() { clearTimeout(editTimer); editTimer = setTimeout(loadEdit, 120); }

async function loadDirections() {
  const sliders = $("sliders");
  sliders.replaceChildren();
  $("direction").replaceChildren();
  const found = await run("directions", (signal) => api(`${modelPath(state.model.name)}/directions`, { signal }));
  if (!found) return;
  state.directions = found.directions;
  for (const d of found.directions.slice(0, SLIDERS)) {
    const wrap = document.createElement("label");
    const input = Object.assign(document.createElement("input"), { type: "range", min: -5, max: 5, step: 0.25, value: 0 });
    input.dataset.direction = d.index;
    input.addEventListener("input", editSoon);
    wrap.append(`Direction ${d.index} (${(100 * d.share).toFixed(1)}%)`, input);
    sliders.append(wrap);
  }
  for (const d of found.directions.slice(0, 16)) $("direction").append(new Option(`${d.index}`, d.index));
}

function fillClasses(select, classes, any) {
  select.replaceChildren(...(any ? [new Option("any (from the seed)", "")] : []), ...classes.map((c, i) => new Option(`${i} ${c}`, i)));
}

async function selectModel(name) {
  state.model = state.models.find((m) => m.name === name);
  const m = state.model;
  const metrics = Object.entries(m.metrics || {}).filter(([, v]) => typeof v === "number").slice(0, 6)
    .map(([k, v]) => `${k} ${Number.isInteger(v) ? v : v.toFixed(3)}`).join(" · ");
  $("metrics").textContent = `${m.kind.toUpperCase()} ${m.version}, latent_dim ${m.latent_dim}${metrics ? ` · ${metrics}` : ""}`;
  const keep = label();
  fillClasses($("label"), m.classes, true);
  $("label").value = keep;
  await loadDirections();
  await loadSamples();
}

async function loadModels() {
  const found = await run("models", (signal) => api("v1/models", { signal }));
  if (!found) { setTimeout(loadModels, 1500); return; }  // 503 while warming up, or 401: retried
  state.models = found.models;
  $("model").replaceChildren(...state.models.map((m) => new Option(`${m.name} (${m.kind})`, m.name)));
  const first = state.models.find((m) => m.kind === "gan") || state.models[0];
  $("model").value = first.name;
  fillClasses($("upload-label"), first.classes, false);
  state.mapModel = state.models.find((m) => m.kind === "vae" && m.latent_dim === 2) || null;
  await selectModel(first.name);
  await loadMap();
}

// ---- strips ----
async function strip(path, json) {
  await run("strip", async (signal) => show($("strip-img"), await api(`${modelPath(state.model.name)}/${path}`, { method: "POST", json, signal })));
}

// ---- the 2-d map ----
function mapLabel() { return label() === "" ? 0 : Number(label()); }

async function loadMap() {
  if (!state.mapModel) { $("map-note").textContent = "No model with a 2-d latent is served (fashion-vae-2d)."; return; }
  const q = new URLSearchParams({ label: mapLabel(), extent: MAP.extent, steps: MAP.steps, scale: MAP.scale });
  await run("map-img", async (signal) => show($("map-img"), await api(`${modelPath(state.mapModel.name)}/map.png?${q}`, { signal })));
}

// map pixels <-> latent: cell c's centre decodes u_c = extent * (2c - (steps - 1)) / (steps - 1)
function toLatent(px, py) {
  const img = $("map-img");
  const k = img.naturalWidth / img.clientWidth / MAP.scale;
  const cell = (p) => Math.min(MAP.steps - 0.5, Math.max(-0.5, (p * k - MAP.pad - MAP.size / 2) / (MAP.size + MAP.pad)));
  const coord = (c) => MAP.extent * (2 * c - (MAP.steps - 1)) / (MAP.steps - 1);
  return [coord(cell(px)), -coord(cell(py))];
}

function toPixels(u, v) {
  const img = $("map-img");
  const k = img.clientWidth / img.naturalWidth * MAP.scale;
  const cell = (z) => (z * (MAP.steps - 1) / MAP.extent + (MAP.steps - 1)) / 2;
  const at = (c) => (MAP.pad + MAP.size / 2 + c * (MAP.size + MAP.pad)) * k;
  return [at(cell(u)), at(cell(-v))];
}

function placeDot(dot, u, v) {
  const [x, y] = toPixels(u, v);
  dot.style.left = `${x}px`;
  dot.style.top = `${y}px`;
  dot.hidden = false;
}

let mapPoint = [0, 0];
async function decodeAt(u, v) {
  mapPoint = [u, v];
  placeDot($("map-dot"), u, v);
  $("map-at").textContent = `z = (${u.toFixed(2)}, ${v.toFixed(2)})`;
  await run("map", async (signal) => show($("map-decoded"), await api(`${modelPath(state.mapModel.name)}/decode`,
    { method: "POST", json: { latents: [[u, v]], labels: mapLabel(), scale: 4 }, signal })));
}

function mapPointer(e) {
  if (!state.mapModel || (e.type === "pointermove" && !e.buttons)) return;
  const box = $("map-img").getBoundingClientRect();
  decodeAt(...toLatent(e.clientX - box.left, e.clientY - box.top));
}

// ---- uploads ----
async function handleUpload(file) {
  if (!file) return;
  show($("up-original"), file);
  const lab = $("upload-label").value;
  const q = (extra) => new URLSearchParams({ label: lab, invert: $("invert").checked, ...extra });
  const type = file.type || "application/octet-stream";
  const vae = state.models.find((m) => m.kind === "vae" && m.latent_dim !== 2) || state.models.find((m) => m.kind === "vae");
  const gan = state.models.find((m) => m.kind === "gan");
  const jobs = [];
  if (vae) {
    jobs.push(run("up-recon", async (signal) => {
      const enc = await api(`${modelPath(vae.name)}/encode?${q({})}`, { method: "POST", body: file, type, signal });
      show($("up-recon"), await api(`${modelPath(vae.name)}/decode`, { method: "POST", json: { latents: [enc.latents[0].mu], labels: Number(lab), scale: 3 }, signal }));
    }));
    jobs.push(run("up-vars", async (signal) => show($("up-vars"),
      await api(`${modelPath(vae.name)}/variations?${q({ n: 8, temperature: 1, seed: 0, columns: 8, scale: 2 })}`, { method: "POST", body: file, type, signal }))));
  }
  if (gan) {
    jobs.push(run("up-proj", async (signal) => {
      const r = await api(`${modelPath(gan.name)}/project?${q({ format: "png", scale: 3 })}`, { method: "POST", body: file, type, signal, raw: true });
      show($("up-proj"), await r.blob());
      $("up-proj-cap").textContent = `GAN projection (MSE ${Number(r.headers.get("X-Projection-MSE")).toFixed(4)})`;
    }));
  }
  if (state.mapModel) {
    jobs.push(run("up-map", async (signal) => {
      const enc = await api(`${modelPath(state.mapModel.name)}/encode?${q({})}`, { method: "POST", body: file, type, signal });
      const [u, v] = enc.latents[0].mu;
      placeDot($("upload-dot"), u, v);
    }));
  }
  await Promise.all(jobs);
}

// ---- wiring ----
function wire() {
  $("api-key").value = sessionStorage.getItem(KEY) || "";
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    if (state.models.length) loadSamples(); else loadModels();
  });
  $("model").addEventListener("change", (e) => selectModel(e.target.value));
  for (const id of ["label", "seed", "n", "columns", "scale"]) $(id).addEventListener("change", loadSamples);
  $("label").addEventListener("change", loadMap);
  $("truncation").addEventListener("input", () => { $("truncation-out").value = Number($("truncation").value).toFixed(2); });
  $("truncation").addEventListener("change", loadSamples);
  $("dice").addEventListener("click", () => {
    state.lastSeed = num("seed");
    $("seed").value = crypto.getRandomValues(new Uint32Array(1))[0] >>> 1;
    loadSamples();
  });
  $("reuse").addEventListener("click", () => { $("seed").value = state.lastSeed; loadSamples(); });
  $("copy").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("curl").textContent); say("curl command copied"); } catch { say("select the command and copy it"); }
  });
  $("traverse").addEventListener("click", () => strip("traverse", { ...startBody(), direction: Number($("direction").value), extent: 3, steps: 7, scale: 2 }));
  $("swap").addEventListener("click", () => strip("class-swap", { seed: num("seed"), truncation: Number($("truncation").value), scale: 2 }));
  $("morph").addEventListener("click", () => strip("interpolate", { start: { seed: num("seed") }, end: { seed: num("seed2") }, steps: 16,
    label: label() === "" ? 0 : Number(label()), truncation: Number($("truncation").value), format: "gif", scale: 3 }));
  const box = $("map-box");
  box.addEventListener("pointerdown", (e) => { box.setPointerCapture?.(e.pointerId); mapPointer(e); });
  box.addEventListener("pointermove", mapPointer);
  box.addEventListener("keydown", (e) => {
    const step = { ArrowLeft: [-0.25, 0], ArrowRight: [0.25, 0], ArrowUp: [0, 0.25], ArrowDown: [0, -0.25] }[e.key];
    if (!step || !state.mapModel) return;
    e.preventDefault();
    decodeAt(mapPoint[0] + step[0], mapPoint[1] + step[1]);
  });
  $("file").addEventListener("change", (e) => handleUpload(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handleUpload(e.dataTransfer.files[0]); });
  document.addEventListener("paste", (e) => { const f = [...(e.clipboardData?.files || [])][0]; if (f) handleUpload(f); });
}

wire();
loadModels();
