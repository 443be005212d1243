// The jaxcerv serve page: upload photographs, show predict's numbers and draw its weight grid.
// Plain JavaScript, no libraries; every number shown comes from the server's JSON line.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
let INFO = null;
let ROWS = [];
let SORT = { key: null, dir: 1 };

function fmt(x, digits = 3) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "n/a";
}

function say(text) {
  const box = $("#message");
  box.textContent = text;
  box.hidden = !text;
}

async function loadModel() {
  const reply = await fetch("/api/model");
  INFO = await reply.json();
  const m = INFO.model, test = INFO.test_metrics || {};
  $("#dataset").textContent = m.dataset;
  $("#auc").textContent = test.roc_auc === undefined || test.roc_auc === null
    ? "not tested" : `${fmt(test.roc_auc)} on ${test.n} test images` +
      (test.n_pos === undefined ? "" : ` (${test.n_pos} CIN2+)`);
  $("#threshold").textContent = `${fmt(INFO.threshold)} (chosen on the run's validation images)`;
  $("#source").textContent = `${m.source || "(unknown)"} · config ${m.config_digest.slice(0, 12)}`;
  if (INFO.warning) {
    $("#warning").textContent = "Warning: " + INFO.warning + ".";
    $("#warning").hidden = false;
  }
  const l = INFO.limits;
  $("#limits").textContent = `At most ${l.max_files} photographs at once, ${l.max_file_mb} MB ` +
    `and ${l.max_megapixels} megapixels each, ${l.max_upload_mb} MB in all. ` +
    "Photographs are not kept by the server.";
  document.body.dataset.state = "ready";
}

async function submit(files) {
  if (!files.length) return;
  say(`Scoring ${files.length} photograph${files.length > 1 ? "s" : ""}…`);
  document.body.dataset.state = "busy";
  const form = new FormData();
  for (const f of files) form.append("photo", f, f.name);
  let reply, body;
  try {
    reply = await fetch("/api/predict", { method: "POST", body: form });
    body = await reply.json();
  } catch (e) {
    say(`The server did not answer (${e}). Is jaxcerv serve still running?`);
    document.body.dataset.state = "done";
    return;
  }
  if (!body.results) {
    say(`Refused (${reply.status}): ${body.error}`);
    document.body.dataset.state = "done";
    return;
  }
  const errors = body.results.filter((r) => r.error).map((r) => r.error);
  say(errors.length ? `${errors.length} of ${body.results.length} could not be scored:\n` +
    errors.join("\n") : "");
  await render(body.results, files);
  document.body.dataset.state = "done";
}

async function render(results, files) {
  const list = $("#results");
  list.replaceChildren();
  ROWS = results.map((r, i) => ({ ...r, index: i, file: files[i] }));
  for (const r of ROWS) {
    r.card = card(r);
    list.append(r.card);
  }
  await Promise.all(ROWS.filter((r) => !r.error).map((r) => draw(r)));
  $("#batch").hidden = ROWS.length < 2;
  SORT = { key: null, dir: 1 };
  table();
}

function card(r) {
  const node = $("#card").content.firstElementChild.cloneNode(true);
  node.id = `photo-${r.index}`;
  $(".name", node).textContent = r.name;
  if (r.error) {
    node.classList.add("failed");
    $(".error", node).textContent = r.error;
    $(".error", node).hidden = false;
    return node;
  }
  const line = r.line;
  node.dataset.probability = String(line.probability);
  node.dataset.label = String(line.label);
  node.dataset.threshold = String(line.threshold);
  $(".probability", node).textContent = fmt(line.probability);
  const decision = $(".decision", node);
  decision.textContent = `Decision: ${line.class}`;
  decision.classList.add(line.label ? "pos" : "neg");
  $(".threshold-line", node).textContent = `${line.label ? "At or above" : "Below"} the ` +
    `threshold ${fmt(line.threshold)} chosen on validation.`;
  const reg = line.regulator;
  $(".regulator-line", node).textContent = !reg
    ? "No regulator ellipse: an exported model carries none (jaxcerv serve --workdir shows it)."
    : drawable(reg) ? `Regulator centre (column, row) = (${fmt(reg[0], 2)}, ${fmt(reg[1], 2)}) ` +
      "patches." : "The patch weights are all zero: no regulator ellipse.";
  link($(".dl-json", node), new Blob([JSON.stringify(line) + "\n"], { type: "application/json" }),
    line.heatmap.replace(/\.heatmap\.png$/, ".json"));
  if (r.npy) link($(".dl-npy", node), bytes(r.npy, "application/octet-stream"), line.weights_file);
  else $(".dl-npy", node).remove();
  const png = $(".dl-png", node);
  png.href = "#";
  png.addEventListener("click", (e) => figure(e, r, png));
  const heat = $("canvas.heat", node), ellipse = $("canvas.ellipse", node);
  const opacity = $(".opacity", node);
  heat.style.opacity = opacity.value / 100;
  opacity.addEventListener("input", () => { heat.style.opacity = opacity.value / 100; });
  const show = $(".show-ellipse", node);
  show.addEventListener("change", () => { ellipse.hidden = !show.checked; });
  return node;
}

async function figure(event, r, a) {
  // predict's heatmap figure is drawn on demand: it is most of predict's time per photograph.
  if (a.download) return;  // drawn already: the link holds it
  event.preventDefault();
  a.textContent = "Drawing the heatmap figure…";
  const form = new FormData();
  form.append("photo", r.file, r.file.name);
  const reply = await fetch("/api/figure", { method: "POST", body: form });
  if (!reply.ok) {
    a.textContent = `Heatmap figure failed: ${(await reply.json()).error}`;
    return;
  }
  link(a, await reply.blob(), r.line.heatmap);
  a.textContent = "Heatmap figure (.png)";
  a.click();
}

function bytes(b64, type) {
  const raw = atob(b64), out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return new Blob([out], { type });
}

function link(a, blob, name) {
  a.href = URL.createObjectURL(blob);
  a.download = name;
}

function drawable(reg) {
  return reg.every((v) => v !== null) && reg[2] > 0 && reg[2] * reg[4] - reg[3] * reg[3] > 0;
}

async function draw(r) {
  const img = new Image();
  img.src = r.photo;
  await img.decode();
  const [pw] = r.line.photo_size, w = img.naturalWidth, h = img.naturalHeight;
  for (const c of r.card.querySelectorAll("canvas")) { c.width = w; c.height = h; }
  $("canvas.photo", r.card).getContext("2d").drawImage(img, 0, 0);
  const s = w / pw;  // display pixels per photograph pixel
  const [L, T, R, B] = r.line.grid_box.map((v) => v * s);
  if (r.weights) heat($("canvas.heat", r.card), r.weights, [L, T, R, B], w, h, r.card);
  else $(".legend", r.card).textContent = "This model has no patch weights: no heatmap.";
  const reg = r.line.regulator;
  if (reg && drawable(reg) && r.weights) {
    ellipse($("canvas.ellipse", r.card), reg, [L, T, R, B], r.weights.length, r.weights[0].length);
  }
}

function heat(canvas, grid, [L, T, R, B], w, h, node) {
  const rows = grid.length, cols = grid[0].length, cw = (R - L) / cols, ch = (B - T) / rows;
  // Colour scale: min-max over the patches that touch the photograph, as predict's figure does.
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const inside = L + (j + 1) * cw > 0 && L + j * cw < w && T + (i + 1) * ch > 0 && T + i * ch < h;
      if (inside) { lo = Math.min(lo, grid[i][j]); hi = Math.max(hi, grid[i][j]); }
    }
  }
  const range = hi > lo ? hi - lo : 1e-6, lut = INFO.colormap;
  const small = document.createElement("canvas");
  small.width = cols; small.height = rows;
  const ctx = small.getContext("2d"), pixels = ctx.createImageData(cols, rows);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const t = Math.min(1, Math.max(0, (grid[i][j] - lo) / range));
      const [cr, cg, cb] = lut[Math.min(255, Math.floor(t * 256))];
      pixels.data.set([cr, cg, cb, 255], 4 * (i * cols + j));
    }
  }
  ctx.putImageData(pixels, 0, 0);
  const out = canvas.getContext("2d");
  out.imageSmoothingEnabled = false;  // one block per patch, as the PNG draws it
  out.drawImage(small, L, T, R - L, B - T);
  $(".lo", node).textContent = fmt(lo, 2);
  $(".hi", node).textContent = fmt(hi, 2);
  const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => `rgb(${lut[Math.min(255, Math.floor(t * 255))]})`);
  $(".bar", node).style.background = `linear-gradient(to right, ${stops.join(", ")})`;
}

function ellipse(canvas, reg, [L, T, R, B], rows, cols) {
  // Patch units -> display pixels; the 2-sigma contour mu + 2 chol(Sigma) [cos t, sin t].
  const [mh, mv, shh, shv, svv] = reg, cw = (R - L) / cols, ch = (B - T) / rows;
  const l11 = Math.sqrt(shh), l21 = shv / l11, l22 = Math.sqrt(Math.max(0, svv - l21 * l21));
  const ctx = canvas.getContext("2d");
  const px = (h) => L + h * cw, py = (v) => T + v * ch;
  ctx.beginPath();
  for (let k = 0; k <= 128; k++) {
    const t = (2 * Math.PI * k) / 128, c = Math.cos(t), sn = Math.sin(t);
    const x = px(mh + 2 * l11 * c), y = py(mv + 2 * (l21 * c + l22 * sn));
    if (k === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  }
  const arm = Math.max(6, canvas.width / 60);
  ctx.moveTo(px(mh) - arm, py(mv)); ctx.lineTo(px(mh) + arm, py(mv));
  ctx.moveTo(px(mh), py(mv) - arm); ctx.lineTo(px(mh), py(mv) + arm);
  const width = Math.max(2, canvas.width / 300);
  ctx.lineWidth = width * 2.2; ctx.strokeStyle = "rgba(0,0,0,0.6)"; ctx.stroke();
  ctx.lineWidth = width; ctx.strokeStyle = "#fff"; ctx.stroke();
}

function table() {
  const body = $("#table tbody");
  const rows = [...ROWS];
  if (SORT.key) {
    const value = (r) => r.error ? null : SORT.key === "name" ? r.name : r.line[SORT.key];
    rows.sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === null || y === null) return (x === null) - (y === null);
      return (x < y ? -1 : x > y ? 1 : 0) * SORT.dir;
    });
  }
  body.replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    const cells = r.error ? [r.name, r.error, ""]
      : [r.name, fmt(r.line.probability), r.line.class];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    if (r.error) { tr.children[1].className = "err"; tr.children[1].colSpan = 2; tr.lastChild.remove(); }
    else {
      tr.dataset.probability = String(r.line.probability);
      if (r.line.label) tr.lastChild.className = "pos";
    }
    tr.addEventListener("click", () => r.card.scrollIntoView({ behavior: "smooth" }));
    return tr;
  }));
  for (const th of document.querySelectorAll("#table th")) {
    th.setAttribute("aria-sort", th.dataset.key === SORT.key
      ? (SORT.dir > 0 ? "ascending" : "descending") : "none");
  }
}

function wire() {
  for (const th of document.querySelectorAll("#table th")) {
    th.addEventListener("click", () => {
      SORT = { key: th.dataset.key, dir: SORT.key === th.dataset.key ? -SORT.dir : 1 };
      table();
    });
  }
  const drop = $("#drop"), input = $("#files");
  input.addEventListener("change", () => submit([...input.files]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    submit([...e.dataTransfer.files]);
  });
}

async function main() {
  wire();
  try {
    await loadModel();
  } catch (e) {
    say(`Cannot reach the model (${e}).`);
    return;
  }
  // Tests and the docs screenshot: a server started with a demo photograph scores it itself.
  if (INFO.demo.length && new URLSearchParams(location.search).has("demo")) {
    const files = await Promise.all(INFO.demo.map(async (name, k) => {
      const blob = await (await fetch(`/demo-photo/${k}`)).blob();
      return new File([blob], name, { type: blob.type });
    }));
    await submit(files);
  }
}

main();
