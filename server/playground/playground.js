// The playground: place an image, submit a job, follow its event stream, show the result.
// Plain JavaScript, no dependencies. It speaks only the public API, with the key sent as the
// x-api-key header (never in a URL): EventSource cannot send headers, so the event stream is read
// with fetch() and parsed here.
"use strict";

const API = "/v1/sd1.5-outpaint";
const KEY_STORE = "outpaint.api_key"; // sessionStorage: this tab only, gone when it closes
const NUMBER_FIELDS = ["num_inference_steps", "img_width", "img_height", "scale", "strength", "offset_x",
                       "offset_y", "guidance_scale", "mask_expand", "seed"];
const INTEGER_FIELDS = new Set(["num_inference_steps", "img_width", "img_height", "offset_x", "offset_y",
                                "mask_expand", "seed"]);
const SCALE_MIN = 0.1, SCALE_MAX = 10;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const context = canvas.getContext("2d");

const state = {
  apiKey: "",
  source: null,     // {bitmap, width, height, base64, name}
  job: null,        // the latest status object of the job being followed
  abort: null,      // AbortController of the event stream
  drag: null,       // {x, y, offsetX, offsetY} where a drag started
  resultUrl: null,  // object URL of the shown result, revoked when replaced
  previews: 0,      // step previews received for the current job
};

// -- errors in plain words ------------------------------------------------------------------------

class ApiProblem extends Error {
  constructor(status, message, field = null) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

const HEADLINES = {
  400: "The server refused a field",
  401: "The API key was not accepted",
  404: "Not found",
  406: "Not enough credits",
  409: "Not possible for this job",
  413: "Too large for this server",
  415: "Unsupported request",
  422: "This Idempotency-Key was used for another request",
  429: "Too many unfinished jobs for this key",
  500: "The server failed",
  503: "The service is unavailable",
};
const ADVICE = {
  401: "Enter a key made with `outpaint keys create`.",
  406: "Nothing was charged. Add credits to this key (`outpaint keys add-credits`) or use another key.",
  413: "Try a smaller image or canvas, or fewer steps.",
  500: "Nothing was charged.",
};

// One sentence for the user: the status's meaning, the server's own message (which names the field
// and the allowed range), and what to do about it.
function explain(status, serverText, retryAfter) {
  const headline = HEADLINES[status] || `HTTP error ${status}`;
  let text = (serverText || "").trim();
  // The server's message often starts with the headline's words ("not enough credits: ...").
  if (text.toLowerCase().startsWith(headline.toLowerCase())) text = text.slice(headline.length).replace(/^[\s:]+/, "");
  let sentence = text ? `${headline}: ${text}` : headline;
  if (!/[.!?]$/.test(sentence)) sentence += ".";
  let advice = ADVICE[status] || "";
  if (retryAfter) advice = `Try again in ${retryAfter} s.`; // 503 (queue full, draining), 429, 409
  return `${sentence} ${advice}`.trim() + ` (HTTP ${status})`;
}

async function problemFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  const serverText = body && typeof body.error === "string" ? body.error : "";
  const field = body && typeof body.field === "string" ? body.field : null;
  return new ApiProblem(response.status, explain(response.status, serverText, response.headers.get("retry-after")),
                        field);
}

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
  for (const element of document.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
}

function showProblem(error) {
  if (error instanceof ApiProblem) {
    showMessage(error.message);
    const input = error.field ? $(error.field === "image" ? "image" : error.field) : null;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  } else if (error && error.name === "AbortError") {
    // the user cancelled or started another job
  } else {
    showMessage(`Something went wrong in the page: ${error}`);
  }
}

// -- the API --------------------------------------------------------------------------------------

function noteCredits(response) {
  const credits = response.headers.get("x-remaining-credits");
  if (credits !== null) $("credits").textContent = credits;
}

async function api(method, path, { body, signal } = {}) {
  const headers = { "x-api-key": state.apiKey };
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, signal, cache: "no-store",
                                   body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiProblem(0, `Could not reach the server: ${error.message}. Is it running?`);
  }
  noteCredits(response);
  if (!response.ok) throw await problemFrom(response);
  return response;
}

async function refreshBalance() {
  if (!state.apiKey) {
    $("credits").textContent = "unknown (enter a key)";
    return;
  }
  try {
    const response = await api("GET", "/v1/user/balance");
    $("credits").textContent = String((await response.json()).credits);
  } catch (error) {
    $("credits").textContent = "unknown";
    showProblem(error);
  }
}

// The ranges and the scheduler list from the server's own OpenAPI, so the inputs' limits are the
// ones it enforces (the HTML's are a fallback with the same values).
async function loadLimits() {
  let schema;
  try {
    const spec = await (await fetch("/openapi.json", { cache: "no-store" })).json();
    const route = spec.paths[`${API}/jobs`] || spec.paths[API];
    schema = route.post.requestBody.content["application/json"].schema;
  } catch {
    return;
  }
  const properties = schema.properties || {};
  for (const name of NUMBER_FIELDS) {
    const property = properties[name];
    const input = $(name);
    if (!property || !input) continue;
    if (property.minimum !== undefined) input.min = String(property.minimum);
    if (property.maximum !== undefined) input.max = String(property.maximum);
    if (property.multipleOf !== undefined) input.step = String(property.multipleOf);
    if (property.description) input.title = property.description;
  }
  const names = properties.scheduler && properties.scheduler.enum;
  if (Array.isArray(names) && names.length) {
    const select = $("scheduler");
    const chosen = select.value;
    select.replaceChildren(...names.map((name) => new Option(name, name, false, name === chosen)));
  }
}

// -- the canvas -----------------------------------------------------------------------------------

function numberOf(name) {
  const value = Number($(name).value);
  return Number.isFinite(value) ? value : NaN;
}

function canvasSize() {
  const fit = (value, fallback) => (Number.isFinite(value) && value >= 64 ? Math.min(Math.round(value), 2048) : fallback);
  return [fit(numberOf("img_width"), canvas.width), fit(numberOf("img_height"), canvas.height)];
}

function currentScale() {
  const scale = numberOf("scale");
  return Number.isFinite(scale) && scale > 0 ? scale : 1;
}

// As the server places it (engine/canvas.py scaled_size): the scaled source, at least 1x1.
function scaledSize(width, height, scale) {
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
}

let checker = null;
function checkerPattern() {
  if (!checker) {
    const tile = document.createElement("canvas");
    tile.width = tile.height = 16;
    const g = tile.getContext("2d");
    g.fillStyle = "#d9dde3";
    g.fillRect(0, 0, 16, 16);
    g.fillStyle = "#eef0f3";
    g.fillRect(0, 0, 8, 8);
    g.fillRect(8, 8, 8, 8);
    checker = context.createPattern(tile, "repeat");
  }
  return checker;
}

function draw() {
  const [width, height] = canvasSize();
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
    checker = null;
  }
  $("placeholder").style.aspectRatio = `${width} / ${height}`;
  context.fillStyle = checkerPattern();
  context.fillRect(0, 0, width, height);
  const source = state.source;
  if (!source) return;
  const [w, h] = scaledSize(source.width, source.height, currentScale());
  const x = numberOf("offset_x") || 0, y = numberOf("offset_y") || 0;
  context.drawImage(source.bitmap, x, y, w, h);
  context.save();
  context.setLineDash([6, 4]);
  context.lineWidth = 2;
  context.strokeStyle = "#1463ff";
  context.strokeRect(x + 1, y + 1, Math.max(0, w - 2), Math.max(0, h - 2));
  context.restore();
}

function clampOffset(value, size) {
  // The source must overlap the canvas (api.md): its corner stays inside it.
  const high = Math.min(Number($("offset_x").max) || 1024, size - 1);
  return Math.min(Math.max(0, Math.round(value)), high);
}

function setOffsets(x, y) {
  const [width, height] = canvasSize();
  $("offset_x").value = String(clampOffset(x, width));
  $("offset_y").value = String(clampOffset(y, height));
  draw();
}

function setScale(scale) {
  const clamped = Math.min(SCALE_MAX, Math.max(SCALE_MIN, scale));
  $("scale").value = String(Math.round(clamped * 1000) / 1000);
  $("scale_slider").value = String(Math.log10(clamped));
  draw();
}

// Scale about a canvas point, which stays under the pointer.
function zoomAt(factor, pointX, pointY) {
  const before = currentScale();
  const after = Math.min(SCALE_MAX, Math.max(SCALE_MIN, before * factor));
  const x = numberOf("offset_x") || 0, y = numberOf("offset_y") || 0;
  setScale(after);
  setOffsets(pointX - (pointX - x) * (after / before), pointY - (pointY - y) * (after / before));
}

function canvasPoint(event) {
  const rect = canvas.getBoundingClientRect();
  return [(event.clientX - rect.left) * (canvas.width / rect.width),
          (event.clientY - rect.top) * (canvas.height / rect.height)];
}

canvas.addEventListener("pointerdown", (event) => {
  if (!state.source || event.button !== 0) return;
  const [x, y] = canvasPoint(event);
  state.drag = { x, y, offsetX: numberOf("offset_x") || 0, offsetY: numberOf("offset_y") || 0 };
  canvas.setPointerCapture(event.pointerId);
  canvas.classList.add("dragging");
  event.preventDefault();
});
canvas.addEventListener("pointermove", (event) => {
  if (!state.drag) return;
  const [x, y] = canvasPoint(event);
  setOffsets(state.drag.offsetX + (x - state.drag.x), state.drag.offsetY + (y - state.drag.y));
});
for (const type of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(type, () => {
    state.drag = null;
    canvas.classList.remove("dragging");
  });
}
canvas.addEventListener("wheel", (event) => {
  if (!state.source) return;
  event.preventDefault();
  const [x, y] = canvasPoint(event);
  zoomAt(Math.exp(-event.deltaY * 0.0015), x, y);
}, { passive: false });
canvas.addEventListener("keydown", (event) => {
  if (!state.source) return;
  const step = event.shiftKey ? 16 : 1;
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
  const x = numberOf("offset_x") || 0, y = numberOf("offset_y") || 0;
  if (moves[event.key]) {
    setOffsets(x + moves[event.key][0], y + moves[event.key][1]);
  } else if (event.key === "+" || event.key === "=") {
    zoomAt(1.05, x, y);
  } else if (event.key === "-") {
    zoomAt(1 / 1.05, x, y);
  } else {
    return;
  }
  event.preventDefault();
});

for (const name of ["img_width", "img_height", "offset_x", "offset_y"]) $(name).addEventListener("input", draw);
$("scale").addEventListener("input", () => {
  const scale = numberOf("scale");
  if (Number.isFinite(scale) && scale > 0) $("scale_slider").value = String(Math.log10(scale));
  draw();
});
$("scale_slider").addEventListener("input", () => setScale(10 ** Number($("scale_slider").value)));

// -- the source image -----------------------------------------------------------------------------

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function useFile(file) {
  clearMessage();
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    showMessage(`${file.name} is not an image this browser can read; send a PNG, JPEG or WebP file.`);
    return;
  }
  // The server's copy is the file's own bytes, not a re-encoding: it decodes them itself.
  const base64 = await readBase64(file);
  if (state.source) state.source.bitmap.close();
  state.source = { bitmap, width: bitmap.width, height: bitmap.height, base64, name: file.name };
  $("image-info").textContent = `${file.name}: ${bitmap.width}×${bitmap.height}`;
  // A source larger than most of the canvas starts scaled down to fit, then centred.
  const [width, height] = canvasSize();
  const fit = Math.min(1, (0.75 * width) / bitmap.width, (0.75 * height) / bitmap.height);
  setScale(fit < 1 ? Math.floor(fit * 100) / 100 : 1);
  const [w, h] = scaledSize(bitmap.width, bitmap.height, currentScale());
  setOffsets((width - w) / 2, (height - h) / 2);
}

$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  if (file) useFile(file);
});
const dropTargets = [$("drop-zone"), canvas];
for (const target of dropTargets) {
  target.addEventListener("dragover", (event) => {
    event.preventDefault();
    $("drop-zone").classList.add("over");
  });
  target.addEventListener("dragleave", () => $("drop-zone").classList.remove("over"));
  target.addEventListener("drop", (event) => {
    event.preventDefault();
    $("drop-zone").classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) useFile(file);
  });
}

// -- the job --------------------------------------------------------------------------------------

function requestBody() {
  const body = { image: state.source.base64, prompt: $("prompt").value, scheduler: $("scheduler").value };
  const negative = $("negative_prompt").value;
  if (negative) body.negative_prompt = negative;
  for (const name of NUMBER_FIELDS) {
    const value = Number($(name).value);
    body[name] = INTEGER_FIELDS.has(name) ? Math.round(value) : value;
  }
  return body;
}

function fieldName(input) {
  const label = input.closest("label") || document.querySelector(`label[for="${input.id}"]`);
  return label ? label.firstChild.textContent.trim() : input.id;
}

// The page's own checks, before anything is sent: the same limits the server enforces.
function checkForm() {
  if (!state.apiKey) {
    $("api_key").focus();
    return "Enter your API key first.";
  }
  if (!state.source) {
    $("image").focus();
    return "Choose or drop a source image first.";
  }
  for (const name of ["prompt", ...NUMBER_FIELDS]) {
    const input = $(name);
    if (!input.checkValidity()) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return `${fieldName(input)} (${name}): ${input.validationMessage}`;
    }
  }
  return null;
}

function showProgress(step, steps, label) {
  $("progress-box").hidden = false;
  $("progress").max = Math.max(1, steps);
  $("progress").value = Math.min(step, steps);
  $("progress-label").textContent = label || `Step ${step} of ${steps}`;
}

function showStatus(job) {
  state.job = job;
  if (job.status === "queued") showProgress(0, job.steps || 1, "Queued: waiting for a free worker");
  else if (job.status === "running" || job.status === "succeeded") showProgress(job.step || 0, job.steps || 1);
}

// The output frame shows one of: the placeholder, the latest step preview, the result.
function showInFrame(which) {
  for (const id of ["placeholder", "preview", "result"]) $(id).hidden = id !== which;
}

function showStep(event) {
  state.previews += 1;
  showProgress(event.step, event.steps);
  const preview = $("preview");
  preview.src = `data:${event.preview_type};base64,${event.preview}`;
  preview.dataset.count = String(state.previews);
  showInFrame("preview");
}

// Server-Sent Events from a fetch() body: blocks separated by a blank line, `field: value` lines.
function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { name, data: data.join("\n") } : null;
}

// Follows the job's events; resolves with its final status object, or null if the stream ended first.
async function followEvents(job, signal) {
  const response = await api("GET", job.links.events, { signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buffer += value;
    // A "\r" at the end may be the first half of a "\r\n": keep it for the next chunk.
    const held = buffer.endsWith("\r") ? "\r" : "";
    buffer = buffer.slice(0, buffer.length - held.length).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (!event) continue;
      const data = JSON.parse(event.data);
      if (event.name === "step") showStep(data);
      else if (event.name === "status") showStatus(data);
      else if (event.name === "done") {
        reader.cancel().catch(() => {});
        return data;
      }
    }
    buffer += held;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// When the stream ends early (a proxy's time limit, a server restart), the status route still knows.
async function pollUntilDone(job, signal) {
  for (;;) {
    const status = await (await api("GET", job.links.self, { signal })).json();
    showStatus(status);
    if (TERMINAL.has(status.status)) return status;
    await sleep(1000);
  }
}

async function showResult(job, signal) {
  let response = await api("GET", job.links.result, { signal });
  while (response.status === 202) { // not stored yet (another replica's row write): the status, not the image
    await sleep(500);
    response = await api("GET", job.links.result, { signal });
  }
  const blob = await response.blob();
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  const image = $("result");
  image.src = state.resultUrl;
  await image.decode().catch(() => {});
  showInFrame("result");
  $("download").href = state.resultUrl;
  $("download").download = `outpaint-${job.seed}.jpg`;
  const seam = job.seam_score === null || job.seam_score === undefined ? "none (no boundary)" : job.seam_score.toFixed(3);
  $("result-info").textContent = `${image.naturalWidth}×${image.naturalHeight}, seed ${job.seed}, seam score ${seam}`;
  $("result-box").hidden = false;
}

async function finish(job, signal) {
  showStatus(job);
  if (job.status === "succeeded") {
    showProgress(job.steps, job.steps);
    await showResult(job, signal);
    showMessage(`Done: seed ${job.seed}.`, "info");
  } else if (job.status === "cancelled") {
    showProgress(job.step || 0, job.steps || 1, "Cancelled");
    showMessage("The job was cancelled; nothing was charged.", "info");
  } else {
    showProgress(job.step || 0, job.steps || 1, "Failed");
    const error = job.error || {};
    showMessage(`The job failed. ${explain(error.status || 500, error.error || "")}`);
  }
}

async function submit() {
  // Enter in the key field submits before its "change" event: take the key as it stands.
  if ($("api_key").value.trim() !== state.apiKey) setKey($("api_key").value);
  clearMessage();
  const problem = checkForm();
  if (problem) {
    showMessage(problem);
    return;
  }
  if (state.abort) state.abort.abort();
  const controller = new AbortController();
  state.abort = controller;
  state.previews = 0;
  state.job = null;
  $("result-box").hidden = true;
  showInFrame("placeholder");
  $("submit").disabled = true;
  showProgress(0, numberOf("num_inference_steps") || 1, "Submitting");
  try {
    const job = await (await api("POST", `${API}/jobs`, { body: requestBody(), signal: controller.signal })).json();
    showStatus(job);
    $("cancel").disabled = false;
    let final = null;
    try {
      final = await followEvents(job, controller.signal);
    } catch (error) {
      if (error.name === "AbortError" || error instanceof ApiProblem) throw error;
      // the stream broke off: fall back to the status route below
    }
    final = final || (await pollUntilDone(job, controller.signal));
    await finish(final, controller.signal);
  } catch (error) {
    if (!state.job) $("progress-box").hidden = true; // refused before a job existed
    showProblem(error);
  } finally {
    if (state.abort === controller) state.abort = null;
    $("submit").disabled = false;
    $("cancel").disabled = true;
    refreshBalance();
  }
}

$("job-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});

$("cancel").addEventListener("click", async () => {
  const job = state.job;
  if (!job || TERMINAL.has(job.status)) return;
  $("cancel").disabled = true;
  try {
    showStatus(await (await api("POST", job.links.cancel)).json());
  } catch (error) {
    showProblem(error);
  }
});

// -- the key --------------------------------------------------------------------------------------

function setKey(key) {
  state.apiKey = key.trim();
  try {
    if (state.apiKey) sessionStorage.setItem(KEY_STORE, state.apiKey);
    else sessionStorage.removeItem(KEY_STORE);
  } catch {
    // storage disabled: the key lives in memory only
  }
  clearMessage();
  refreshBalance();
}

$("api_key").addEventListener("change", () => setKey($("api_key").value));

try {
  const saved = sessionStorage.getItem(KEY_STORE);
  if (saved) {
    $("api_key").value = saved;
    state.apiKey = saved;
  }
} catch {
  // storage disabled
}
for (const name of NUMBER_FIELDS) $(name).required = true;
draw();
loadLimits();
refreshBalance();
