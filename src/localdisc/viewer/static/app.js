// localdisc viewer: plain JavaScript, no build step, talks only to the server it came from.
"use strict";

const state = {
  info: null,
  current: null, // id of the image on the stage
  level: "pixel",
  query: null, // {image, x, y, level}
  result: null, // the last /api/similarity answer
  hidden: new Set(), // hidden cluster numbers
  seq: 0, // the latest similarity request; older answers are dropped
  pending: 0, // requests in flight, for the progress display
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

async function getJSON(url) {
  const response = await fetch(url);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function showMessage(text) {
  $("message").textContent = text || "";
  $("message").hidden = !text;
}

const imageInfo = (id) => state.info.images[id];
const fmt = (value) => value.toFixed(3);
// A point in the file's pixels as JSON [x, y]: what a `localize --landmarks` file takes.
const filePoint = ([x, y]) => `[${x}, ${y}]`;

// Markers are placed in percent of the image so that they follow any display size.
function marker(kind, x, y, w, h, title) {
  const node = el("span", { className: `marker ${kind}`, title });
  node.style.left = `${((x + 0.5) / w) * 100}%`;
  node.style.top = `${((y + 0.5) / h) * 100}%`;
  return node;
}

function matchFor(id) {
  if (!state.result) return null;
  if (state.result.self.id === id) return state.result.self;
  return state.result.matches.find((m) => m.id === id) || null;
}

// --- the stage: one large image with its overlays ------------------------------------------
function clusterURL(id) {
  const hide = [...state.hidden].sort((a, b) => a - b).join(",");
  return `/api/clusters/${id}.png` + (hide ? `?hide=${hide}` : "");
}

function renderStage() {
  const id = state.current;
  if (id === null) return;
  const info = imageInfo(id);
  $("main-image").src = `/api/image/${id}.png`;
  $("main-image").alt = info.name;
  $("image-caption").textContent =
    `${info.name} — ${info.width} × ${info.height} px shown` +
    (info.original[0] !== info.width ? ` (file ${info.original[0]} × ${info.original[1]})` : "");

  const clusters = $("show-clusters").checked;
  $("cluster-overlay").hidden = !clusters;
  if (clusters) $("cluster-overlay").src = clusterURL(id);
  $("cluster-overlay").style.opacity = $("cluster-opacity").value;

  if (state.info.segmenter) {
    const seg = $("show-seg").checked;
    $("seg-overlay").hidden = !seg;
    if (seg) $("seg-overlay").src = `/api/segmentation/${id}.png`;
    $("seg-overlay").style.opacity = $("seg-opacity").value;
    $("seg-download").href = `/api/segmentation/${id}/prob.png`;
  }

  const match = matchFor(id);
  const heat = $("stage-heatmap");
  heat.hidden = !(match && $("show-heatmap").checked);
  if (match) heat.src = match.heatmap;
  heat.style.opacity = $("heatmap-opacity").value;

  const markers = $("stage-markers");
  markers.replaceChildren();
  if (match) {
    const q = state.result.query;
    if (q.image === id) {
      markers.append(marker("query", q.x, q.y, info.width, info.height, "query point"));
    } else {
      const [bx, by] = match.best;
      markers.append(marker("best", bx, by, info.width, info.height, `best match ${fmt(match.max)}`));
    }
  }
  for (const node of document.querySelectorAll(".thumb, .match")) {
    node.classList.toggle("current", Number(node.dataset.imageId) === id);
  }
}

function select(id) {
  state.current = id;
  renderStage();
}

function stagePoint(event) {
  const img = $("main-image");
  const rect = img.getBoundingClientRect();
  const info = imageInfo(state.current);
  const clamp = (v, n) => Math.min(n - 1, Math.max(0, Math.floor(v)));
  return {
    x: clamp(((event.clientX - rect.left) / rect.width) * info.width, info.width),
    y: clamp(((event.clientY - rect.top) / rect.height) * info.height, info.height),
  };
}

// --- similarity ----------------------------------------------------------------------------
async function runQuery(image, x, y) {
  const seq = ++state.seq;
  const results = $("results");
  results.dataset.state = "loading";
  $("results-title").textContent = `Computing ${state.level}-level similarity…`;
  state.pending++;
  pollStatus();
  try {
    const q = new URLSearchParams({ image, x, y, level: state.level });
    const data = await getJSON(`/api/similarity?${q}`);
    if (seq !== state.seq) return;
    state.result = data;
    state.query = data.query;
    showMessage("");
    $("scale-low").textContent = data.scale.low.toFixed(2);
    $("scale-high").textContent = data.scale.high.toFixed(2);
    renderResults();
    renderStage();
    // "ready" once every heatmap is decoded: what a user (or a test) then sees is final.
    const images = [...document.querySelectorAll("#matches img"), $("stage-heatmap")];
    await Promise.all(images.filter((img) => img.src).map((img) => img.decode().catch(() => null)));
    if (seq === state.seq) results.dataset.state = "ready";
  } catch (error) {
    if (seq !== state.seq) return;
    results.dataset.state = "error";
    $("results-title").textContent = "Similarity failed";
    showMessage(error.message);
  } finally {
    state.pending--;
  }
}

function card(m, rank, query) {
  const info = imageInfo(m.id);
  const isSelf = rank === 0;
  const mini = el("div", { className: "stage mini" }, [
    el("img", { src: `/api/image/${m.id}.png`, alt: info.name }),
    el("img", { src: m.heatmap, className: "overlay heatmap", alt: `similarity on ${info.name}` }),
  ]);
  mini.children[1].style.opacity = "0.85";
  const markers = el("div", { className: "markers" });
  if (isSelf) markers.append(marker("query", query.x, query.y, info.width, info.height, "query"));
  else markers.append(marker("best", m.best[0], m.best[1], info.width, info.height, "best match"));
  mini.append(markers);
  const caption = el("figcaption", {}, [
    el("span", { className: "rank", text: isSelf ? "query" : `#${rank}` }),
    el("span", { className: "name", text: info.name }),
    el("span", {
      className: "value",
      text: isSelf
        ? `point (${query.x}, ${query.y}) shown`
        : `best ${fmt(m.max)} at (${m.best[0]}, ${m.best[1]}) shown`,
    }),
    el("span", {
      className: "value file-point",
      title: "x, y in the image file's pixels, as localize --landmarks takes them",
      text: `file px ${filePoint(isSelf ? query.file : m.best_file)}`,
    }),
  ]);
  const figure = el(
    "figure",
    {
      className: `match${isSelf ? " self" : ""}`,
      title: "Show on the large view",
      dataset: {
        imageId: m.id, rank, max: m.max, min: m.min, mean: m.mean,
        bestX: m.best[0], bestY: m.best[1], bestFileX: m.best_file[0], bestFileY: m.best_file[1],
      },
    },
    [mini, caption],
  );
  figure.addEventListener("click", () => select(m.id));
  return figure;
}

function renderResults() {
  const { query, self, matches } = state.result;
  const results = $("results");
  Object.assign(results.dataset, {
    image: query.image, x: query.x, y: query.y, level: query.level,
    fileX: query.file[0], fileY: query.file[1],
  });
  $("results-title").textContent =
    `Point (${query.x}, ${query.y}) of ${imageInfo(query.image).name} — ${query.level} level`;
  // The page's pixels are those of the shrunk display image; a landmark file needs the file's.
  const info = imageInfo(query.image);
  $("query-file").hidden = false;
  $("query-file").textContent =
    `In file pixels (x, y), as localize --landmarks takes them: ${filePoint(query.file)}. ` +
    `(${query.x}, ${query.y}) are pixels of the ${info.width} × ${info.height} display image.`;
  $("results-help").textContent = matches.length
    ? "Other images ranked by best match (highest similarity first). Click one to view it large."
    : "Only one image is loaded.";
  $("matches").replaceChildren(card(self, 0, query), ...matches.map((m, i) => card(m, i + 1, query)));
  for (const thumb of document.querySelectorAll(".thumb")) {
    const m = matchFor(Number(thumb.dataset.imageId));
    thumb.querySelector(".score").textContent = m && m.id !== query.image ? fmt(m.max) : "";
  }
}

// --- progress ------------------------------------------------------------------------------
let pollTimer = null;

async function pollStatus() {
  clearTimeout(pollTimer);
  let busy = state.pending > 0;
  try {
    const s = await getJSON("/api/status");
    // Clusters and pixel embeddings are computed in the background from the start (the
    // embeddings as far as the server's cache holds them); a query then goes over every image.
    // Cached counts are no measure of progress: a bounded cache may never hold them all.
    busy = busy || s.warming || s.query !== null || s.working !== null;
    $("progress").hidden = !busy;
    if (busy) {
      const [count, what] = s.query
        ? [s.query.done, `${s.query.level} similarity`]
        : [s.warmed, "clusters and pixel embeddings"];
      $("progress-bar").max = Math.max(1, s.total);
      $("progress-bar").value = count;
      $("progress-text").textContent =
        `${what} ${count}/${s.total}` + (s.working ? ` — ${s.working}` : "");
    }
  } catch (error) {
    busy = true; // the server may be busy: try again soon
  }
  pollTimer = setTimeout(pollStatus, busy ? 300 : 2000);
}

// --- start ---------------------------------------------------------------------------------
function buildSidebar() {
  const { images, errors } = state.info;
  $("image-count").textContent = `(${images.length})`;
  $("thumbs").replaceChildren(
    ...images.map((info) => {
      const button = el("button", { className: "thumb", type: "button", title: info.name,
                                    dataset: { imageId: info.id } }, [
        el("img", { src: `/api/thumb/${info.id}.png`, alt: info.name, loading: "lazy" }),
        el("span", { className: "name", text: info.name }),
        el("span", { className: "score" }),
      ]);
      button.addEventListener("click", () => select(info.id));
      return button;
    }),
  );
  $("bad-images").hidden = errors.length === 0;
  $("bad-list").replaceChildren(
    ...errors.map((e) =>
      el("li", { className: "bad-image", dataset: { name: e.name } }, [
        el("span", { text: e.name, title: e.file }),
        el("span", { className: "reason", text: e.error }),
      ]),
    ),
  );
}

function buildClusterLegend() {
  const legend = $("cluster-legend");
  legend.replaceChildren(
    ...state.info.clusters.map((c) => {
      const box = el("input", { type: "checkbox", checked: !state.hidden.has(c.index),
                                dataset: { cluster: c.index } });
      box.addEventListener("change", () => {
        if (box.checked) state.hidden.delete(c.index);
        else state.hidden.add(c.index);
        $("show-clusters").checked = true;
        renderStage();
      });
      const swatch = el("span", { className: "swatch" });
      swatch.style.background = c.colour;
      return el("label", { title: `cluster ${c.index}` }, [box, swatch, String(c.index)]);
    }),
  );
}

function setAllClusters(visible) {
  state.hidden = visible ? new Set() : new Set(state.info.clusters.map((c) => c.index));
  for (const box of document.querySelectorAll("#cluster-legend input")) box.checked = visible;
  $("show-clusters").checked = true;
  renderStage();
}

function wire() {
  $("stage").addEventListener("click", (event) => {
    if (state.current === null) return;
    const { x, y } = stagePoint(event);
    runQuery(state.current, x, y);
  });
  for (const radio of document.querySelectorAll('input[name="level"]')) {
    radio.addEventListener("change", () => {
      state.level = radio.value;
      if (state.query) runQuery(state.query.image, state.query.x, state.query.y);
      pollStatus();
    });
  }
  for (const id of ["show-clusters", "show-heatmap", "show-seg"]) {
    $(id).addEventListener("change", renderStage);
  }
  const opacity = { "cluster-opacity": "cluster-overlay", "heatmap-opacity": "stage-heatmap",
                    "seg-opacity": "seg-overlay" };
  for (const [slider, target] of Object.entries(opacity)) {
    $(slider).addEventListener("input", () => { $(target).style.opacity = $(slider).value; });
  }
  $("clusters-all").addEventListener("click", () => setAllClusters(true));
  $("clusters-none").addEventListener("click", () => setAllClusters(false));
}

async function init() {
  wire();
  try {
    state.info = await getJSON("/api/info");
  } catch (error) {
    showMessage(`Cannot reach the viewer server: ${error.message}`);
    return;
  }
  $("model-name").textContent = `model: ${state.info.model} · ${state.info.clusters.length} clusters`;
  $("seg-panel").hidden = !state.info.segmenter;
  buildSidebar();
  buildClusterLegend();
  if (state.info.images.length) select(0);
  else showMessage("No image could be read.");
  document.body.dataset.ready = "true";
  pollStatus();
}

init();
