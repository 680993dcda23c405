// The capsule explorer page. Plain JavaScript, no build step, nothing from the internet: every view
// is drawn from this server's public APIs (metadata, explain_image, reconstruct, perturb, equivariance).
"use strict";

const $ = (id) => document.getElementById(id);
// What the page knows; the browser tests read it (window.explorer).
const state = { models: [], model: null, explanation: null, pose: null, partClass: null, updates: 0,
  busy: false, pending: false, source: null, inked: false, redraws: 0 };
window.explorer = state;

function status(message) { $("status").textContent = message || ""; }

// GET without a body (the read-only /metadata), else a POST of `body` as JSON
async function callJSON(path, body) {
  const response = await fetch(path, body === undefined ? {} : { method: "POST",
    headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function postImage(path, blob) {
  const form = new FormData();
  form.append("images", blob, "input.png");
  form.append("model", state.model.name);
  const response = await fetch(path, { method: "POST", body: form });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// Paint an [S][S] image (values in [0, 1]) on a canvas, through colour(v...) -> [r, g, b] in [0, 255].
function paint(canvas, layers, colour) {
  const size = layers[0].length;
  const small = document.createElement("canvas");
  small.width = small.height = size;
  const ctx = small.getContext("2d");
  const data = ctx.createImageData(size, size);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const rgb = colour(...layers.map((l) => l[y][x]));
      const i = 4 * (y * size + x);
      data.data[i] = rgb[0]; data.data[i + 1] = rgb[1]; data.data[i + 2] = rgb[2]; data.data[i + 3] = 255;
    }
  }
  ctx.putImageData(data, 0, 0);
  const target = canvas.getContext("2d");
  target.imageSmoothingEnabled = false;
  target.drawImage(small, 0, 0, canvas.width, canvas.height);
}
const gray = (v) => { const g = Math.round(255 * Math.min(1, Math.max(0, v))); return [g, g, g]; };
// two digits in two colours: orange and cyan
const twoColours = (a, b) => [Math.min(255, 255 * a), Math.min(255, 140 * a + 200 * b), Math.min(255, 255 * b)];

// ---- models ----
async function loadModels() {
  const meta = await callJSON("/metadata");
  state.models = meta.models.filter((m) => m.explorer);
  const select = $("model");
  select.innerHTML = "";
  for (const m of state.models) select.add(new Option(`${m.name} (${m.input_size[1]}×${m.input_size[2]})`, m.name));
  if (!state.models.length) {
    status("No served model was exported for the explorer (capsnet export without --no-explorer).");
    return;
  }
  const preferred = state.models.find((m) => m.name === meta.default_model) || state.models[0];
  select.value = preferred.name;
  chooseModel(preferred.name);
  document.body.dataset.ready = "1";
}

function chooseModel(name) {
  state.model = state.models.find((m) => m.name === name);
  for (const id of ["part-class", "other-class"]) {
    const select = $(id);
    select.innerHTML = "";
    state.model.class_names.forEach((c, k) => select.add(new Option(c, String(k))));
  }
  state.partClass = null;
  if (state.inked || state.source) update();
}

// ---- drawing pad ----
const pad = $("pad");
const pen = pad.getContext("2d");
let drawing = false;
let lastSent = 0;

function clearPad() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, pad.width, pad.height);
  state.inked = false;
  state.source = null;
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  state.source = null;  // drawing replaces an uploaded photo
  pad.setPointerCapture(event.pointerId);
  const [x, y] = padPoint(event);
  pen.strokeStyle = "#fff"; pen.lineWidth = 20; pen.lineCap = "round"; pen.lineJoin = "round";
  pen.beginPath(); pen.moveTo(x, y); pen.lineTo(x + 0.1, y + 0.1); pen.stroke();
  state.inked = true;
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = padPoint(event);
  pen.lineTo(x, y); pen.stroke();
  if (performance.now() - lastSent > 250) update();  // predictions follow the pen
});
const stopDrawing = () => { if (drawing) { drawing = false; update(); } };
pad.addEventListener("pointerup", stopDrawing);
pad.addEventListener("pointercancel", stopDrawing);

$("clear").addEventListener("click", () => { clearPad(); resetViews(); });
$("upload").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  state.source = file;
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
  clearPad();
  state.source = file;
  pen.drawImage(bitmap, (pad.width - bitmap.width * scale) / 2, (pad.height - bitmap.height * scale) / 2,
    bitmap.width * scale, bitmap.height * scale);
  update();
});

function resetViews() {
  state.explanation = null;
  $("predicted-label").textContent = "–";
  for (const id of ["bars", "sliders", "perturb-grid", "strips"]) $(id).innerHTML = "";
  for (const id of ["seen", "parts", "recon", "interp"]) {
    const c = $(id); c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
}

// ---- explain: one request per update, the latest drawing wins ----
async function update() {
  if (!state.model || (!state.inked && !state.source)) return;
  if (state.busy) { state.pending = true; return; }
  state.busy = true;
  lastSent = performance.now();
  try {
    const blob = state.source || await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    const [explanation] = await postImage("/explain_image", blob);
    show(explanation);
    status("");
  } catch (error) {
    status(error.message);
  } finally {
    state.busy = false;
    if (state.pending) { state.pending = false; update(); }
  }
}

function show(e) {
  state.explanation = e;
  state.pose = e.poses[e.label].slice();
  if (state.partClass === null || drawing) state.partClass = e.label;
  $("part-class").value = String(state.partClass);
  const names = e.objects.map((o) => o.class_name);
  $("predicted-label").textContent = names.join(" and ");
  paint($("seen"), [e.input[0]], gray);
  drawParts();
  drawBars(e);
  drawSliders();
  drawReconstruction(e);
  const other = (e.label + 1) % state.model.class_names.length;
  if (Number($("other-class").value) === e.label || !$("other-class").dataset.touched) $("other-class").value = String(other);
  interpolate();
  state.updates += 1;
}

function drawBars(e) {
  const bars = $("bars");
  bars.innerHTML = "";
  const winners = new Set(e.objects.map((o) => o.label));
  e.probabilities.forEach((p, k) => {
    const row = document.createElement("div");
    row.className = "bar" + (winners.has(k) ? " winner" : "");
    row.innerHTML = `<span>${state.model.class_names[k]}</span><div class="fill" style="width:${(100 * p).toFixed(1)}%"></div>` +
      `<span>${p.toFixed(3)}</span>`;
    bars.appendChild(row);
  });
}

// ---- part-whole map ----
let hoverCell = null;
function drawParts() {
  const e = state.explanation;
  const canvas = $("parts");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!e) return;
  const map = e.part_whole.grid_mass[state.partClass];
  const field = e.part_whole.receptive_field;
  const scale = canvas.width / e.input[0].length;
  const step = field.centres.length > 1 ? field.centres[1] - field.centres[0] : 1;
  const top = Math.max(1e-9, ...map.flat());
  map.forEach((row, i) => row.forEach((mass, j) => {
    ctx.fillStyle = `rgba(255, 120, 0, ${(0.85 * mass / top).toFixed(3)})`;
    ctx.fillRect((field.centres[j] + 0.5 - step / 2) * scale, (field.centres[i] + 0.5 - step / 2) * scale,
      step * scale, step * scale);
  }));
  if (hoverCell) {
    const [i, j] = hoverCell;
    const half = (field.size - 1) / 2;
    ctx.strokeStyle = "#3cf"; ctx.lineWidth = 2;
    ctx.strokeRect((field.centres[j] - half) * scale, (field.centres[i] - half) * scale, field.size * scale,
      field.size * scale);
  }
}
$("parts").addEventListener("pointermove", (event) => {
  const e = state.explanation;
  if (!e) return;
  const canvas = $("parts");
  const box = canvas.getBoundingClientRect();
  const x = (event.clientX - box.left) / box.width * e.input[0].length;
  const y = (event.clientY - box.top) / box.height * e.input[0].length;
  const nearest = (v) => e.part_whole.receptive_field.centres.reduce(
    (best, c, k, all) => (Math.abs(c + 0.5 - v) < Math.abs(all[best] + 0.5 - v) ? k : best), 0);
  hoverCell = [nearest(y), nearest(x)];
  drawParts();
});
$("parts").addEventListener("pointerleave", () => { hoverCell = null; drawParts(); });
$("part-class").addEventListener("change", (event) => { state.partClass = Number(event.target.value); drawParts(); });

// ---- reconstruction and pose sliders ----
function drawReconstruction(e) {
  const objects = e.objects.filter((o) => o.reconstruction);
  if (objects.length === 2) paint($("recon"), [objects[0].reconstruction[0], objects[1].reconstruction[0]], twoColours);
  else paint($("recon"), [e.reconstruction[0]], gray);
}

function drawSliders() {
  const box = $("sliders");
  box.innerHTML = "";
  state.pose.forEach((value, d) => {
    const slider = document.createElement("input");
    Object.assign(slider, { type: "range", min: "-0.6", max: "0.6", step: "0.01", value: String(value) });
    slider.setAttribute("aria-label", `pose dimension ${d}`);
    slider.dataset.dim = String(d);
    const shown = document.createElement("span");
    shown.textContent = value.toFixed(2);
    slider.addEventListener("input", () => {
      state.pose[d] = Number(slider.value);
      shown.textContent = state.pose[d].toFixed(2);
      redraw();
    });
    const name = document.createElement("span");
    name.textContent = `d${d}`;
    box.append(name, slider, shown);
  });
}

let redrawing = false, redrawAgain = false;
async function redraw() {
  if (redrawing) { redrawAgain = true; return; }
  redrawing = true;
  const e = state.explanation;
  const poses = e.poses.map((row) => row.slice());
  poses[e.label] = state.pose.slice();
  try {
    const answer = await callJSON("/reconstruct", { poses: [poses], label: e.label, model: state.model.name });
    paint($("recon"), [answer.images[0][0]], gray);
    state.redraws += 1;
  } catch (error) {
    status(error.message);
  } finally {
    redrawing = false;
    if (redrawAgain) { redrawAgain = false; redraw(); }
  }
}
$("reset").addEventListener("click", () => {
  if (!state.explanation) return;
  state.pose = state.explanation.poses[state.explanation.label].slice();
  drawSliders();
  drawReconstruction(state.explanation);
});

async function interpolate() {
  const e = state.explanation;
  if (!e) return;
  const other = Number($("other-class").value);
  const t = Number($("mix").value);
  const poses = e.poses.map((row) => row.map(() => 0));
  poses[other] = state.pose.map((v, d) => (1 - t) * v + t * e.poses[other][d]);
  try {
    const answer = await callJSON("/reconstruct", { poses: [poses], label: other, model: state.model.name });
    paint($("interp"), [answer.images[0][0]], gray);
  } catch (error) {
    status(error.message);
  }
}
$("other-class").addEventListener("change", () => { $("other-class").dataset.touched = "1"; interpolate(); });
$("mix").addEventListener("input", interpolate);

// ---- Fig. 4 grid and equivariance, on demand ----
$("show-perturb").addEventListener("click", async () => {
  const e = state.explanation;
  if (!e) { status("draw a digit first"); return; }
  try {
    const grid = await callJSON("/perturb", { image: e.input, label: e.label, model: state.model.name });
    const box = $("perturb-grid");
    box.innerHTML = "";
    for (const row of grid.images) {
      for (const image of row) {
        const c = document.createElement("canvas");
        c.width = c.height = image.length;
        paint(c, [image], gray);
        box.appendChild(c);
      }
    }
  } catch (error) {
    status(error.message);
  }
});

$("show-equivariance").addEventListener("click", async () => {
  const e = state.explanation;
  if (!e) { status("draw a digit first"); return; }
  try {
    const answer = await callJSON("/equivariance", { image: e.input, max_shift: 3, max_rotation: 30,
      model: state.model.name });
    const box = $("strips");
    box.innerHTML = `<p class="legend">class kept in ${(100 * answer.class_kept).toFixed(0)} % of the views</p>`;
    for (const strip of answer.strips) {
      const title = document.createElement("h3");
      title.textContent = { shift_x: "shift along x (px)", shift_y: "shift along y (px)", rotation: "rotation (°)" }[strip.kind];
      const row = document.createElement("div");
      row.className = "strip";
      for (const view of strip.views) {
        const figure = document.createElement("figure");
        const c = document.createElement("canvas");
        c.width = c.height = view.image.length;
        paint(c, [view.image], gray);
        const caption = document.createElement("figcaption");
        caption.innerHTML = `${view.value}<br><span class="${view.label === answer.label ? "" : "changed"}">` +
          `${view.class_name}</span> ${view.length.toFixed(2)}`;
        figure.append(c, caption);
        row.appendChild(figure);
      }
      box.append(title, row, posePlot(strip.views));
    }
  } catch (error) {
    status(error.message);
  }
});

// the original class's pose across one strip: one line per dimension
function posePlot(views) {
  const c = document.createElement("canvas");
  c.width = 280; c.height = 70;
  c.style.background = "#fff";
  const ctx = c.getContext("2d");
  const all = views.flatMap((v) => v.pose);
  const low = Math.min(...all), high = Math.max(...all, low + 1e-6);
  views[0].pose.forEach((_, d) => {
    ctx.strokeStyle = `hsl(${(360 * d) / views[0].pose.length}, 70%, 45%)`;
    ctx.beginPath();
    views.forEach((v, k) => {
      const x = 5 + (270 * k) / Math.max(1, views.length - 1);
      const y = 65 - (60 * (v.pose[d] - low)) / (high - low);
      if (k === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
  return c;
}

$("model").addEventListener("change", (event) => chooseModel(event.target.value));
clearPad();
loadModels().catch((error) => status(error.message));
