(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("attnref-data").textContent);
  const tokens = data.tokens, T = tokens.length, L = data.layers, H = data.heads;
  const drawn = {layers: new Set(), heads: new Set(), thumbnails: 0, done: false};
  const state = {layer: L - 1, shown: new Array(H).fill(true), focus: null,
                 threshold: data.threshold};
  let weights = null, rollout = null;   // Uint8Array (L, H, T, T) and (T, T): 255 sqrt(w)
  const WEIGHT = Float64Array.from({length: 256}, (_, q) => (q / 255) ** 2);   // level -> w

  // the status line and document.body.dataset.rendered, for people and the browser test
  window.attnrefStatus = function () {
    if (!drawn.done) return;
    const result = {layers: drawn.layers.size, heads: drawn.heads.size,
                    thumbnails: drawn.thumbnails, tokens: T, errors: window.attnrefErrors};
    document.body.dataset.rendered = JSON.stringify(result);
    const status = document.getElementById("status");
    status.textContent = "rendered " + result.layers + " layers x " + result.heads +
      " heads (" + result.thumbnails + " maps), " + T + " tokens; " +
      (result.errors.length ? result.errors.length + " error(s): " + result.errors.join("; ")
                            : "no errors");
    status.classList.toggle("bad", result.errors.length > 0);
  };

  async function unpack(text, count) {
    if (typeof DecompressionStream === "undefined")
      throw new Error("this browser has no DecompressionStream: cannot read the weights");
    const binary = atob(text), bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const levels = new Uint8Array(await new Response(stream).arrayBuffer());
    if (levels.length !== count)
      throw new Error("expected " + count + " weights, decoded " + levels.length);
    return levels;
  }

  // colour of a level: w^(1/3) on a white-to-dark-blue ramp, so that the 1/T of a
  // uniform row over 128 tokens is still visibly blue
  const STOPS = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181],
                 [8, 48, 107]];
  const RAMP = new Uint8ClampedArray(256 * 3);
  for (let q = 0; q < 256; q++) {
    const t = Math.cbrt(WEIGHT[q]) * (STOPS.length - 1), k = Math.min(Math.floor(t),
                                                                    STOPS.length - 2);
    for (let c = 0; c < 3; c++)
      RAMP[3 * q + c] = STOPS[k][c] + (STOPS[k + 1][c] - STOPS[k][c]) * (t - k);
  }
  const headColour = h => "hsl(" + Math.round(360 * h / H) + ", 75%, 42%)";

  // a T x T map (offset into levels) as a T x T-pixel canvas
  function mapImage(levels, offset) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = T;
    const context = canvas.getContext("2d"), image = context.createImageData(T, T);
    for (let i = 0; i < T * T; i++) {
      const q = levels[offset + i];
      image.data[4 * i] = RAMP[3 * q]; image.data[4 * i + 1] = RAMP[3 * q + 1];
      image.data[4 * i + 2] = RAMP[3 * q + 2]; image.data[4 * i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    return canvas;
  }

  function shorten(context, text, width) {
    if (context.measureText(text).width <= width) return text;
    while (text.length > 1 && context.measureText(text + "\u2026").width > width)
      text = text.slice(0, -1);
    return text + "\u2026";
  }

  // ---- head view: queries left, keys right, one line per (head, query, key)
  const headCanvas = document.getElementById("head-view");
  const ROW = 16, FONT = "12px monospace", GAP = 260;
  let labelWidth = 0;

  function layoutHeadView() {
    const context = headCanvas.getContext("2d");
    context.font = FONT;
    labelWidth = Math.min(130, 8 + Math.max(...tokens.map(t => context.measureText(t).width)));
    const width = 2 * labelWidth + GAP, height = T * ROW + 8, ratio = window.devicePixelRatio || 1;
    headCanvas.width = width * ratio; headCanvas.height = height * ratio;
    headCanvas.style.width = width + "px"; headCanvas.style.height = height + "px";
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
  }

  function drawHeadView() {
    const context = headCanvas.getContext("2d");
    const width = 2 * labelWidth + GAP, y = i => 4 + ROW * i + ROW / 2;
    const x0 = labelWidth + 2, x1 = labelWidth + GAP - 2;
    const focus = state.focus;
    const BUCKETS = 16;
    context.clearRect(0, 0, width, T * ROW + 8);
    context.lineWidth = focus ? 2 : 1.5;
    for (let h = 0; h < H; h++) {
      if (!state.shown[h]) continue;
      // lines grouped by opacity: one stroke per (head, opacity bucket)
      const paths = Array.from({length: BUCKETS}, () => new Path2D());
      const base = (state.layer * H + h) * T * T;
      const iFrom = focus && focus.side === "query" ? focus.index : 0;
      const iTo = focus && focus.side === "query" ? focus.index + 1 : T;
      for (let i = iFrom; i < iTo; i++) {
        const jFrom = focus && focus.side === "key" ? focus.index : 0;
        const jTo = focus && focus.side === "key" ? focus.index + 1 : T;
        for (let j = jFrom; j < jTo; j++) {
          const w = WEIGHT[weights[base + i * T + j]];
          if (w === 0 || w < state.threshold) continue;
          const path = paths[Math.min(BUCKETS - 1, Math.floor(w * BUCKETS))];
          path.moveTo(x0, y(i)); path.lineTo(x1, y(j));
        }
      }
      context.strokeStyle = headColour(h);
      for (let b = 0; b < BUCKETS; b++) {
        context.globalAlpha = (b + 0.5) / BUCKETS;
        context.stroke(paths[b]);
      }
    }
    context.globalAlpha = 1;
    context.font = FONT; context.textBaseline = "middle";
    for (let i = 0; i < T; i++) {
      for (const side of ["query", "key"]) {
        const focused = focus && focus.side === side && focus.index === i;
        if (focused) {
          context.fillStyle = "#ffe9a8";
          context.fillRect(side === "query" ? 0 : x1, y(i) - ROW / 2, labelWidth, ROW);
        }
        context.fillStyle = focused ? "#000" : "#333";
        context.textAlign = side === "query" ? "right" : "left";
        context.fillText(shorten(context, tokens[i], labelWidth - 8),
                         side === "query" ? x0 - 4 : x1 + 4, y(i));
      }
    }
    readHeadFocus();
  }

  function readHeadFocus() {
    const readout = document.getElementById("head-readout"), focus = state.focus;
    const heads = state.shown.map((on, h) => on ? h : -1).filter(h => h >= 0);
    if (!focus || heads.length === 0) { readout.textContent = "\u00a0"; return; }
    const mean = new Float64Array(T);
    for (const h of heads) {
      const base = (state.layer * H + h) * T * T;
      for (let k = 0; k < T; k++) {
        mean[k] += WEIGHT[focus.side === "query" ? weights[base + focus.index * T + k]
                                                 : weights[base + k * T + focus.index]];
      }
    }
    const top = Array.from(mean.keys()).sort((a, b) => mean[b] - mean[a]).slice(0, 5);
    readout.textContent = (focus.side === "query" ? "query " : "key ") +
      JSON.stringify(tokens[focus.index]) + " (" + focus.index + "), mean of " + heads.length +
      " head(s): " + (focus.side === "query" ? "attends to " : "attended by ") +
      top.map(k => tokens[k] + " (" + k + ") " + (mean[k] / heads.length).toFixed(2)).join(", ");
  }

  headCanvas.addEventListener("mousemove", event => {
    const box = headCanvas.getBoundingClientRect();
    const x = event.clientX - box.left, i = Math.floor((event.clientY - box.top - 4) / ROW);
    const side = x < labelWidth + GAP / 2 ? "query" : "key";
    const focus = i >= 0 && i < T ? {side: side, index: i} : null;
    const same = focus && state.focus && focus.side === state.focus.side &&
                 focus.index === state.focus.index;
    if (!same && (focus || state.focus)) { state.focus = focus; drawHeadView(); }
  });
  headCanvas.addEventListener("mouseleave", () => { state.focus = null; drawHeadView(); });

  function buildControls() {
    const select = document.getElementById("layer");
    for (let l = 0; l < L; l++) select.add(new Option("layer " + l, String(l)));
    select.value = String(state.layer);
    select.addEventListener("change", () => { state.layer = Number(select.value); refresh(); });
    const slider = document.getElementById("threshold");
    const shown = document.getElementById("threshold-value");
    slider.value = String(state.threshold); shown.textContent = state.threshold.toFixed(2);
    slider.addEventListener("input", () => {
      state.threshold = Number(slider.value); shown.textContent = state.threshold.toFixed(2);
      drawHeadView();
    });
    const toggles = document.getElementById("head-toggles");
    for (let h = 0; h < H; h++) {
      const label = document.createElement("label"), box = document.createElement("input");
      box.type = "checkbox"; box.checked = true; box.dataset.head = String(h);
      box.addEventListener("change", () => { state.shown[h] = box.checked; refresh(); });
      label.style.background = headColour(h);
      label.append(box, "H" + h);
      toggles.append(label);
    }
    const setAll = on => { state.shown.fill(on); refresh(); };
    document.getElementById("all-heads").addEventListener("click", () => setAll(true));
    document.getElementById("no-heads").addEventListener("click", () => setAll(false));
  }

  function refresh() {
    document.getElementById("layer").value = String(state.layer);
    for (const box of document.querySelectorAll("#head-toggles input")) {
      box.checked = state.shown[Number(box.dataset.head)];
      box.parentElement.classList.toggle("off", !box.checked);
    }
    for (const canvas of document.querySelectorAll("#model-view canvas")) {
      canvas.classList.toggle("current", Number(canvas.dataset.layer) === state.layer &&
                                         state.shown[Number(canvas.dataset.head)]);
    }
    drawHeadView();
  }

  // ---- model view: every layer x head map as a thumbnail
  function drawModelView() {
    const grid = document.getElementById("model-view");
    const size = Math.max(40, Math.min(96, Math.floor(600 / H) - 4));
    const flagged = new Set(data.flagged.map(([l, h]) => l + "," + h));
    grid.style.gridTemplateColumns = "auto repeat(" + H + ", " + (size + 2) + "px)";
    const label = text => {
      const cell = document.createElement("div");
      cell.className = "label"; cell.textContent = text; grid.append(cell);
    };
    label("");
    for (let h = 0; h < H; h++) label("H" + h);
    for (let l = 0; l < L; l++) {
      label("L" + l);
      for (let h = 0; h < H; h++) {
        const canvas = mapImage(weights, (l * H + h) * T * T);
        canvas.style.width = canvas.style.height = size + "px";
        if (T < size) canvas.style.imageRendering = "pixelated";
        canvas.dataset.layer = String(l); canvas.dataset.head = String(h);
        canvas.title = "layer " + l + " head " + h +
          (data.head_types[l][h] ? ": " + data.head_types[l][h] : "");
        if (flagged.has(l + "," + h)) canvas.classList.add("flagged");
        canvas.addEventListener("click", () => {
          state.layer = l; state.shown = state.shown.map((_, k) => k === h); refresh();
        });
        grid.append(canvas);
        drawn.layers.add(l); drawn.heads.add(h); drawn.thumbnails += 1;
      }
    }
  }

  // ---- rollout map, with thinned labels on both axes
  function drawRollout() {
    const canvas = document.getElementById("rollout");
    const cell = Math.max(3, Math.min(22, Math.floor(560 / T)));
    const every = Math.ceil(13 / cell), context = canvas.getContext("2d");
    context.font = "11px monospace";
    const margin = Math.min(110, 10 + Math.max(...tokens.map(t => context.measureText(t).width)));
    const side = margin + cell * T + 4, ratio = window.devicePixelRatio || 1;
    canvas.width = side * ratio; canvas.height = side * ratio;
    canvas.style.width = canvas.style.height = side + "px";
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.imageSmoothingEnabled = false;
    context.drawImage(mapImage(rollout, 0), margin, margin, cell * T, cell * T);
    context.strokeStyle = "#ccd"; context.strokeRect(margin, margin, cell * T, cell * T);
    context.font = "11px monospace"; context.fillStyle = "#333"; context.textBaseline = "middle";
    for (let i = 0; i < T; i += every) {
      const text = shorten(context, tokens[i], margin - 8), at = margin + cell * (i + 0.5);
      context.textAlign = "right"; context.fillText(text, margin - 4, at);
      context.save(); context.translate(at, margin - 4); context.rotate(-Math.PI / 2);
      context.textAlign = "left"; context.fillText(text, 0, 0); context.restore();
    }
    canvas.addEventListener("mousemove", event => {
      const box = canvas.getBoundingClientRect();
      const j = Math.floor((event.clientX - box.left - margin) / cell);
      const i = Math.floor((event.clientY - box.top - margin) / cell);
      const readout = document.getElementById("rollout-readout");
      readout.textContent = i >= 0 && i < T && j >= 0 && j < T
        ? JSON.stringify(tokens[i]) + " (" + i + ") draws " +
          WEIGHT[rollout[i * T + j]].toFixed(3) + " from " + JSON.stringify(tokens[j]) +
          " (" + j + ")"
        : "\u00a0";
    });
  }

  async function main() {
    weights = await unpack(data.weights, L * H * T * T);
    rollout = await unpack(data.rollout, T * T);
    buildControls();
    drawModelView();
    layoutHeadView();
    refresh();
    drawRollout();
  }

  main().catch(error => window.attnrefErrors.push("render: " + (error && error.stack || error)))
        .finally(() => { drawn.done = true; window.attnrefStatus(); });
})();
