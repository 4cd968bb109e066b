// aevb explorer: draws what the server decodes. No model code runs here; every latent is
// sent to /api/* and comes back as pixels (raw uint8 arrays) or vector values. A conditional
// model's context goes with every request: the selected class, or the current example
// (whose observed part a completion model keeps).
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const SLIDERS_PER_PAGE = 16; // continuous coordinates shown at once
const PICKERS_PER_PAGE = 64; // class / code pickers shown at once

const state = {
  info: null, // /api/info
  map: null, // /api/map of the current split
  split: "test",
  coords: [], // the current latent, as page coordinates (see explorer.py)
  marker: null, // [x, y] of the current latent on the map, when known
  example: 0,
  label: 0, // the selected class of a label-conditioned model
  contextKey: null, // "split#example" whose observed part a completion model decodes with
  page: 0,
  busy: 0,
};

// --- talking to the server ----------------------------------------------------------------
async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  document.body.dataset.busy = ++state.busy; // requests in flight (the browser test waits on it)
  try {
    const res = await fetch(path, init);
    const data = await res.json();
    if (!res.ok) throw new Error(data.error || res.statusText);
    return data;
  } finally {
    document.body.dataset.busy = --state.busy;
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// The context a conditional model decodes with (see app.py), as request fields.
function contextBody() {
  const on = state.info.conditions_on;
  if (on === "labels") return { label: state.label };
  if (on === "observed") return { split: state.split, context_index: state.example };
  return {};
}

// Live requests (drag, sliders, temperature): one in flight; while it runs, only the
// newest pending call is kept, so the page never queues stale work.
function live(fn) {
  let running = false;
  let pending = null;
  const run = async (args) => {
    running = true;
    try {
      await fn(...args);
      if ($("status").classList.contains("error")) setStatus(""); // the last error is over
    } catch (e) { setStatus(e.message, true); }
    running = false;
    if (pending) { const next = pending; pending = null; run(next); }
  };
  return (...args) => { if (running) pending = args; else run(args); };
}

// --- drawing decoded data -----------------------------------------------------------------
function imageTiles(images) {
  // -> an array of canvases, one per decoded item, at native size
  if (images.format === "vector") return images.values.map((v) => vectorTile(v, images.value_range));
  const { n, height: h, width: w, channels: c } = images;
  const bytes = Uint8Array.from(atob(images.data), (ch) => ch.charCodeAt(0));
  const tiles = [];
  for (let i = 0; i < n; i++) {
    const tile = document.createElement("canvas");
    tile.width = w; tile.height = h;
    const ctx = tile.getContext("2d");
    const img = ctx.createImageData(w, h);
    for (let p = 0; p < h * w; p++) {
      const src = (i * h * w + p) * c;
      const rgb = c >= 3 ? [bytes[src], bytes[src + 1], bytes[src + 2]] : [bytes[src], bytes[src], bytes[src]];
      img.data.set([...rgb, c === 4 ? bytes[src + 3] : 255], p * 4);
    }
    ctx.putImageData(img, 0, 0);
    tiles.push(tile);
  }
  return tiles;
}

function vectorTile(values, [lo, hi]) {
  // a bar chart of one vector, values scaled into the data's range
  const tile = document.createElement("canvas");
  tile.width = 96; tile.height = 96;
  const ctx = tile.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, 96, 96);
  const bw = 96 / values.length;
  const y = (v) => 96 - 96 * Math.min(1, Math.max(0, (v - lo) / (hi - lo || 1)));
  ctx.fillStyle = "#2f6fdf";
  values.forEach((v, i) => { const t = y(v); ctx.fillRect(i * bw, t, Math.max(1, bw - 1), 96 - t); });
  return tile;
}

function drawGrid(canvas, images, { cols = images.n, size = 64, gap = 4 } = {}) {
  const tiles = imageTiles(images);
  const rows = Math.ceil(tiles.length / cols);
  canvas.width = cols * (size + gap) - gap;
  canvas.height = rows * (size + gap) - gap;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  tiles.forEach((t, i) => {
    const [x, y] = [(i % cols) * (size + gap), Math.floor(i / cols) * (size + gap)];
    ctx.drawImage(t, x, y, size, size);
    if (images.format !== "vector") markObserved(ctx, x, y, size);
  });
}

function markObserved(ctx, x0, y0, size) {
  // a completion model's observed part (the context, pasted back as given): tinted, and
  // outlined where it meets the part the model fills in
  const mask = state.info.observed_mask;
  if (!mask) return;
  const [h, w] = [mask.length, mask[0].length];
  const [sx, sy] = [size / w, size / h];
  const seen = (r, c) => r >= 0 && r < h && c >= 0 && c < w && mask[r][c] === 1;
  ctx.save();
  ctx.fillStyle = "rgba(47, 111, 223, 0.18)";
  ctx.strokeStyle = "#2f6fdf";
  ctx.lineWidth = Math.max(1, Math.min(2, sx / 4));
  ctx.beginPath();
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      if (!seen(r, c)) continue;
      const [x, y] = [x0 + c * sx, y0 + r * sy];
      ctx.fillRect(x, y, sx, sy);
      const missing = (rr, cc) => rr >= 0 && rr < h && cc >= 0 && cc < w && !seen(rr, cc);
      if (missing(r - 1, c)) { ctx.moveTo(x, y); ctx.lineTo(x + sx, y); }
      if (missing(r + 1, c)) { ctx.moveTo(x, y + sy); ctx.lineTo(x + sx, y + sy); }
      if (missing(r, c - 1)) { ctx.moveTo(x, y); ctx.lineTo(x, y + sy); }
      if (missing(r, c + 1)) { ctx.moveTo(x + sx, y); ctx.lineTo(x + sx, y + sy); }
    }
  }
  ctx.stroke();
  ctx.restore();
}

function drawDecoded(images) {
  drawGrid($("decoded"), images, { cols: 1, size: 192 });
  $("decoded").dataset.version = Number($("decoded").dataset.version) + 1;
}

// --- the current latent ---------------------------------------------------------------
const decodeCurrent = live(async () => {
  const res = await api("/api/decode", { coords: [state.coords], ...contextBody() });
  drawDecoded(res.images);
  drawMap();
});

function setCoords(coords, marker) {
  state.coords = coords.slice();
  state.marker = marker !== undefined ? marker : project(coords);
  renderSliders();
}

function project(coords) {
  // where a latent sits on the map: z itself (2-D) or its PCA projection; else unknown
  const m = state.map;
  if (!m || state.info.map_mode !== "inverse") return null;
  if (!m.pca) return [coords[0], coords.length > 1 ? coords[1] : 0];
  return m.pca.components.map((row) => row.reduce((s, w, j) => s + w * (coords[j] - m.pca.mean[j]), 0))
    .concat([0]).slice(0, 2);
}

async function showExample(index, adopt) {
  const res = await api(`/api/example?split=${state.split}&index=${index}`);
  state.example = index;
  $("example-index").value = index;
  const ctx = $("example").getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, 192, 192);
  ctx.drawImage(imageTiles(res.example)[0], 0, 0, 192, 192);
  if (res.example.format !== "vector") markObserved(ctx, 0, 0, 192);
  const label = state.map && state.map.labels ? `, label ${state.map.labels[index]}` : "";
  $("example-caption").textContent = `example #${index} of ${state.split}${label}`;
  if (adopt) {
    setCoords(res.coords, state.map ? state.map.xy[index] : null);
    drawDecoded(res.decoded);
    drawMap();
  }
  // the example's context: its class (when it is the start), or its observed part
  const on = state.info.conditions_on;
  if (on === "labels" && adopt && res.label != null && res.label !== state.label) {
    selectClass(res.label, false); // res.decoded already has the example's own class
  } else if (on === "observed" && `${state.split}#${index}` !== state.contextKey) {
    contextChanged(!adopt);
  }
}

// --- the context of a conditional model ----------------------------------------------------
function selectClass(label, redecode = true) {
  state.label = label;
  $("class").value = String(label);
  contextChanged(redecode);
}

function contextChanged(redecode = true) {
  // a new class or observed part: redraw what was decoded with the old one
  state.contextKey = `${state.split}#${state.example}`;
  describeContext();
  if (redecode) decodeCurrent();
  samplePrior();
  if (state.map) interpolate().catch((e) => setStatus(e.message, true));
}

function describeContext() {
  const info = state.info;
  if (info.conditions_on === "labels") {
    const name = info.classes[state.label];
    $("decoded-caption").textContent = `E[x | z, y = ${name}] of the current latent and the selected class`;
    $("interp-hint").textContent = "Decode the path between the posterior points of two examples of the split (each encoded with its own class), with the selected class.";
    $("prior-hint").textContent = `New data of class ${name}: z drawn from p(z | y = ${name}) at a temperature (below 1 stays near the typical region), then decoded with that class.`;
  } else if (info.conditions_on === "observed") {
    $("decoded-caption").textContent = `E[x | z, x_obs]: the tinted, outlined part is example #${state.example}'s, as given`;
    $("interp-hint").textContent = `Decode the path between the posterior points of two examples of the split, completing example #${state.example}'s observed part.`;
    $("prior-hint").textContent = `Completions of example #${state.example}: z drawn from p(z | x_obs) at a temperature, then decoded with its observed part (tinted).`;
  }
}

function setupContext() {
  const info = state.info;
  if (info.conditions_on === "labels") {
    info.classes.forEach((name, k) => $("class").append(new Option(name, String(k))));
    $("class-pick").hidden = false;
    $("class").addEventListener("change", () => selectClass(Number($("class").value)));
  } else if (info.conditions_on === "observed") {
    $("context-note").hidden = false;
    $("context-note").textContent = "This model completes an example from its observed part (tinted and outlined): every decode and prior sample keeps the part of the example shown on the right. Choose another example # to complete it.";
    $("example-index").addEventListener("change", () =>
      showExample(Number($("example-index").value), false).catch((e) => setStatus(e.message, true)));
  }
  describeContext();
}

// --- sliders and pickers ------------------------------------------------------------------
function renderSliders() {
  const info = state.info;
  const box = $("sliders");
  const discrete = info.coord_kind === "index";
  const per = discrete ? PICKERS_PER_PAGE : SLIDERS_PER_PAGE;
  const start = state.page * per;
  const end = Math.min(info.coord_dim, start + per);
  box.replaceChildren();
  const shape = info.latent.shape;
  const gridCols = info.latent.kind === "codes" && shape.length === 2 ? Math.min(shape[1], 16) : 0;
  box.classList.toggle("grid", gridCols > 0);
  box.style.setProperty("--cols", gridCols);
  for (let j = start; j < end; j++) box.append(discrete ? picker(j) : slider(j));
}

function slider(j) {
  const { low, high } = state.info;
  const row = document.createElement("label");
  row.className = "slider";
  const input = Object.assign(document.createElement("input"), {
    type: "range", min: low[j], max: high[j], step: (high[j] - low[j]) / 400, value: state.coords[j],
  });
  const out = document.createElement("output");
  out.textContent = Number(state.coords[j]).toFixed(2);
  input.addEventListener("input", () => {
    state.coords[j] = Number(input.value);
    out.textContent = state.coords[j].toFixed(2);
    state.marker = project(state.coords);
    decodeCurrent();
  });
  const name = Object.assign(document.createElement("span"), { textContent: coordName(j) });
  row.append(name, input, out);
  return row;
}

function picker(j) {
  const info = state.info;
  const classes = info.latent.classes || info.latent.shape[info.latent.shape.length - 1];
  const wrap = Object.assign(document.createElement("label"), { className: "picker" });
  const select = document.createElement("select");
  for (let k = 0; k < classes; k++) select.append(new Option(String(k), String(k)));
  select.value = String(state.coords[j]);
  select.addEventListener("change", () => {
    state.coords[j] = Number(select.value);
    state.marker = null;
    decodeCurrent();
  });
  wrap.append(coordName(j), select);
  return wrap;
}

function coordName(j) {
  const { kind, shape, groups } = state.info.latent;
  if (kind === "codes" && shape.length === 2) return `(${Math.floor(j / shape[1])},${j % shape[1]})`;
  if (kind === "categorical") return `var ${j + 1}`;
  if (groups.length > 1) {
    let start = 0;
    for (const g of groups) { if (j < start + g.size) return `${g.name}[${j - start}]`; start += g.size; }
  }
  return `z${j + 1}`;
}

function setupSliderPages() {
  const info = state.info;
  const discrete = info.coord_kind === "index";
  const per = discrete ? PICKERS_PER_PAGE : SLIDERS_PER_PAGE;
  const what = discrete ? (info.latent.kind === "codes" ? "code positions" : "variables") : "dimensions";
  const pages = Math.ceil(info.coord_dim / per);
  const note = discrete
    ? `One picker per position: choose a ${info.latent.kind === "codes" ? "codebook entry" : "class"}.`
    : "Each slider moves one latent dimension (range: the prior's 0.1%–99.9% quantiles).";
  $("slider-note").textContent = pages > 1
    ? `${note} Showing ${per} of ${info.coord_dim} ${what} at a time; the others keep their values.`
    : note;
  const sel = $("slider-page");
  sel.hidden = pages <= 1;
  for (let p = 0; p < pages; p++) {
    sel.append(new Option(`${what} ${p * per + 1}–${Math.min(info.coord_dim, (p + 1) * per)}`, p));
  }
  sel.addEventListener("change", () => { state.page = Number(sel.value); renderSliders(); });
}

// --- the latent map -----------------------------------------------------------------------
function mapFrame() {
  const canvas = $("map");
  const m = state.map;
  const pad = 24;
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [x, y] of m.xy) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  const span = Math.max(x1 - x0, y1 - y0, 1e-6) * 1.1; // equal scales on both axes
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const px = (canvas.width - 2 * pad) / span;
  return {
    toPx: ([x, y]) => [canvas.width / 2 + (x - cx) * px, canvas.height / 2 - (y - cy) * px],
    fromPx: ([u, v]) => [cx + (u - canvas.width / 2) / px, cy - (v - canvas.height / 2) / px],
  };
}

function drawMap() {
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const m = state.map;
  if (!m) return;
  const { toPx } = mapFrame();
  ctx.globalAlpha = 0.75;
  m.xy.forEach((p, i) => {
    const [u, v] = toPx(p);
    ctx.fillStyle = m.labels ? PALETTE[m.labels[i] % PALETTE.length] : "#4b5563";
    ctx.beginPath(); ctx.arc(u, v, 3, 0, 2 * Math.PI); ctx.fill();
  });
  ctx.globalAlpha = 1;
  ctx.fillStyle = "#5f6b7a";
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText(m.axes[0] + " →", canvas.width - 60, canvas.height - 8);
  if (m.axes[1]) ctx.fillText("↑ " + m.axes[1], 8, 16);
  if (state.marker) {
    // the current latent; outside the frame it sits on the edge, drawn dashed
    const [pu, pv] = toPx(state.marker);
    const clamp = (a, hi) => Math.min(hi - 10, Math.max(10, a));
    const [u, v] = [clamp(pu, canvas.width), clamp(pv, canvas.height)];
    ctx.setLineDash(u !== pu || v !== pv ? [3, 3] : []);
    ctx.strokeStyle = "#111"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(u, v, 8, 0, 2 * Math.PI); ctx.moveTo(u - 12, v); ctx.lineTo(u + 12, v);
    ctx.moveTo(u, v - 12); ctx.lineTo(u, v + 12); ctx.stroke();
    ctx.setLineDash([]);
  }
}

const decodeMapPoint = live(async (point) => {
  const res = await api("/api/map/decode", { split: state.split, points: [point], ...contextBody() });
  state.coords = res.coords[0];
  state.marker = state.info.map_mode === "inverse" ? point : state.map.xy[res.nearest[0]];
  state.nearest = res.nearest[0];
  drawDecoded(res.images);
  drawMap();
  renderSliders();
});

function setupMap() {
  const canvas = $("map");
  let dragging = false;
  const point = (ev) => {
    const r = canvas.getBoundingClientRect();
    const u = (ev.clientX - r.left) * (canvas.width / r.width);
    const v = (ev.clientY - r.top) * (canvas.height / r.height);
    return mapFrame().fromPx([u, v]);
  };
  canvas.addEventListener("pointerdown", (ev) => {
    if (!state.map) return;
    dragging = true;
    canvas.setPointerCapture(ev.pointerId);
    decodeMapPoint(point(ev));
  });
  canvas.addEventListener("pointermove", (ev) => { if (dragging) decodeMapPoint(point(ev)); });
  const stop = () => {
    if (!dragging) return;
    dragging = false;
    if (state.info.conditions_on === "observed") return; // the shown example is the context
    if (state.nearest !== undefined) showExample(state.nearest, false).catch((e) => setStatus(e.message, true));
  };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
}

async function loadMap(split) {
  state.split = split;
  setStatus(`encoding the ${split} split…`);
  state.map = await api(`/api/map?split=${split}`);
  const m = state.map;
  const shown = m.n < m.total ? `the first ${m.n} of ${m.total}` : `all ${m.n}`;
  const axes = m.explained
    ? `PC1 and PC2 of the posterior summaries (${(100 * m.explained[0]).toFixed(0)}% and ${(100 * m.explained[1]).toFixed(0)}% of their variance)`
    : "the posterior means (z1, z2)";
  const click = m.mode === "inverse"
    ? (m.explained ? "mean + components · (PC1, PC2)" : "that z")
    : "the posterior point of the nearest example";
  $("map-hint").textContent = `${shown} ${split} examples at ${axes}. Click or drag to decode ${click}.`;
  const labels = [...new Set(m.labels || [])].sort((a, b) => a - b);
  $("legend").replaceChildren(...labels.slice(0, 20).map((l) => {
    const s = Object.assign(document.createElement("span"), { textContent: `label ${l}` });
    s.style.setProperty("--swatch", PALETTE[l % PALETTE.length]);
    return s;
  }));
  state.marker = project(state.coords);
  drawMap();
  setStatus("");
  if (state.info.conditions_on === "observed" && `${split}#${state.example}` !== state.contextKey) {
    await showExample(Math.min(state.example, m.n - 1), false); // the new split's example
  }
}

// --- interpolation, prior samples, run summary --------------------------------------------
async function interpolate() {
  const steps = Number($("interp-steps").value);
  const res = await api("/api/interpolate", {
    split: state.split, a: Number($("interp-a").value), b: Number($("interp-b").value),
    steps, method: $("interp-method").value, ...contextBody(),
  });
  drawGrid($("interp-strip"), res.images, { cols: Math.min(steps, 16), size: 64 });
}

const samplePrior = live(async () => {
  const temperature = Number($("prior-temp").value);
  $("prior-temp-value").textContent = temperature.toFixed(2);
  const res = await api("/api/prior", {
    n: Number($("prior-n").value), temperature, seed: Number($("prior-seed").value),
    ...contextBody(),
  });
  drawGrid($("prior-grid"), res.images, { cols: 16, size: 52 });
});

function lineChart(title, series) {
  // an SVG line chart of [{name, color, points: [[epoch, value]]}]
  const W = 340, H = 210, L = 52, R = 10, T = 24, B = 30;
  const pts = series.flatMap((s) => s.points);
  const [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  const [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const paths = series.map((s) => `<path fill="none" stroke="${s.color}" stroke-width="1.6" d="${
    s.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("")}"/>`);
  const ticks = [y0, (y0 + y1) / 2, y1].map((y) =>
    `<text x="${L - 6}" y="${sy(y) + 4}" text-anchor="end">${y.toFixed(2)}</text>` +
    `<line x1="${L}" x2="${W - R}" y1="${sy(y)}" y2="${sy(y)}" stroke="#eef0f3"/>`);
  const legend = series.map((s, i) =>
    `<text x="${W - R - 44 * (series.length - 1 - i)}" y="16" text-anchor="end" style="fill:${s.color}">— ${s.name}</text>`);
  return `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${title}">
    <text class="title" x="${L}" y="16">${title}</text>${ticks.join("")}${paths.join("")}${legend.join("")}
    <text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">epoch ${x0} – ${x1}</text></svg>`;
}

function numberTable(obj) {
  const rows = Object.entries(obj).filter(([k, v]) => typeof v === "number" && !k.endsWith("_se"));
  if (!rows.length) return "";
  return "<table>" + rows.map(([k, v]) => {
    const se = typeof obj[k + "_se"] === "number" ? ` ± ${obj[k + "_se"].toPrecision(3)}` : "";
    return `<tr><th>${k}</th><td class="num">${Number.isInteger(v) ? v : v.toFixed(4)}${se}</td></tr>`;
  }).join("") + "</table>";
}

async function loadSummary() {
  const s = await api("/api/summary");
  const curves = [
    ["neg-ELBO (nats/example)", "neg_elbo"], ["rate = KL (nats)", "kl"],
    ["distortion = recon NLL (nats)", "recon_nll"],
  ].map(([title, key]) => {
    const series = [["train", "#2f6fdf"], ["valid", "#d9480f"]].map(([split, color]) => ({
      name: split, color,
      points: s.records.filter((r) => r[`${split}_${key}`] != null).map((r) => [r.epoch, r[`${split}_${key}`]]),
    })).filter((x) => x.points.length);
    return series.length ? lineChart(title, series) : "";
  });
  $("charts").innerHTML = curves.join("") || "<p class='hint'>No metrics.jsonl in this run.</p>";
  const evals = Object.entries(s.evaluations);
  $("evaluation").innerHTML = evals.length
    ? evals.map(([name, e]) => `<h3><code>${name}</code></h3>${numberTable(e)}`).join("")
    : `<p class="hint">No evaluation file in the run directory. Write one with
       <code>aevb evaluate ${state.info.run} --json &gt; ${state.info.run}/evaluation.json</code>.</p>`;
  if (s.final) $("evaluation").innerHTML += `<h3>Last record of metrics.jsonl</h3>${numberTable(s.final)}`;
}

function setupTabs() {
  document.querySelectorAll(".tabs button").forEach((b) => b.addEventListener("click", () => {
    document.querySelectorAll(".tabs button").forEach((o) => o.setAttribute("aria-selected", o === b));
    document.querySelectorAll(".tab").forEach((t) => { t.hidden = t.id !== `tab-${b.dataset.tab}`; });
  }));
}

// --- start --------------------------------------------------------------------------------
function describeRun(info) {
  const l = info.latent;
  const prior = l.standard_normal ? ", N(0, I) prior" : "";
  const size = l.kind === "continuous" ? `${info.coord_dim} dims` : `shape ${l.shape.join("×")}, ${l.classes} classes`;
  const context = { labels: " · conditioned on the class", observed: " · completes the observed part" };
  return `${info.name} · ${info.model} on ${info.dataset} · ${l.kind} latent (${size}${prior})${context[info.conditions_on] || ""}`;
}

async function main() {
  const info = (state.info = await api("/api/info"));
  $("run-line").textContent = describeRun(info);
  state.coords = info.origin.slice();
  const splits = Object.keys(info.splits);
  state.split = info.default_split || splits[0] || state.split;
  state.contextKey = `${state.split}#${state.example}`;
  setupContext();
  setupSliderPages();
  renderSliders();
  setupTabs();
  setupMap();
  const catchShow = (p) => p.catch((e) => setStatus(e.message, true));
  for (const m of info.interpolation_methods) $("interp-method").append(new Option(m, m));
  $("from-origin").addEventListener("click", () => {
    if (!info.conditions_on) { setCoords(info.origin); decodeCurrent(); return; }
    // the origin of p(z | this context) (a conditional prior's depends on it)
    api("/api/origin", contextBody()).then((res) => {
      setCoords(res.coords[0]);
      drawDecoded(res.images);
      drawMap();
    }).catch((e) => setStatus(e.message, true));
  });
  $("from-example").addEventListener("click", () => catchShow(showExample(Number($("example-index").value), true)));
  $("interp-a-set").addEventListener("click", () => { $("interp-a").value = state.example; });
  $("interp-b-set").addEventListener("click", () => { $("interp-b").value = state.example; });
  $("interp-go").addEventListener("click", () => catchShow(interpolate()));
  $("prior-temp").addEventListener("input", samplePrior);
  $("prior-go").addEventListener("click", samplePrior);
  decodeCurrent();
  samplePrior();
  catchShow(loadSummary());
  if (!splits.length) {
    $("map-hint").textContent = info.data_error || "This run has no data: the map is off.";
    ["interp-go", "from-example"].forEach((id) => { $(id).disabled = true; });
  } else {
    for (const s of splits) $("split").append(new Option(`${s} (${info.splits[s]})`, s));
    $("split").value = info.default_split || splits[0];
    $("split").addEventListener("change", () => catchShow(loadMap($("split").value)));
    await loadMap($("split").value);
    await showExample(0, false);
    await interpolate();
  }
  document.body.dataset.ready = "1";
}

main().catch((e) => setStatus(e.message, true));
