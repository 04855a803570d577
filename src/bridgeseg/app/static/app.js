// The bridgeseg page: pick an image, name the classes, segment, show the overlay, legend, areas and latency.
// Vanilla JS, no dependencies; text from the server or the user is only ever set as textContent.
"use strict";

const elements = {};
let modelClasses = [];
let previewUrl = null;

function $(id) {
  return document.getElementById(id);
}

function showError(message) {
  elements.error.textContent = message;
  elements.error.hidden = !message;
}

function setPreview(url) {
  if (previewUrl) {
    URL.revokeObjectURL(previewUrl);
    previewUrl = null;
  }
  if (url && url.startsWith("blob:")) {
    previewUrl = url;
  }
  elements.preview.hidden = !url;
  if (url) {
    elements.preview.src = url;
  } else {
    elements.preview.removeAttribute("src");
  }
}

async function fetchJson(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const message = body && (body.error || body.detail);
    throw new Error(message ? String(message) : `the server answered ${response.status} ${response.statusText}`);
  }
  return body;
}

async function loadInfo() {
  const info = await fetchJson("api/info");
  modelClasses = info.classes;
  elements.classes.value = modelClasses.join(", ");
  const vocabulary = info.open_vocabulary ? "open vocabulary" : "closed set";
  elements.modelInfo.textContent =
    `${info.method} model, ${info.classes.length} classes, ${vocabulary}` +
    (info.checkpoint ? ` (${info.checkpoint})` : "");
  elements.vocabularyHint.textContent = info.open_vocabulary
    ? "Open vocabulary: any names work, e.g. \"cat, grass, sky\"."
    : "Closed set: this model segments its own classes only; other names are refused.";
  const megabytes = info.limits.max_upload_bytes / (1024 * 1024);
  elements.imageFile.title = `at most ${megabytes.toFixed(0)} MB and ${info.limits.max_pixels} pixels`;
}

// Each example says what it is (a held-out mosaic, or a whole photo with an open-vocabulary class list) and
// may come with the class list to try it with.
const exampleClasses = new Map();

async function loadExamples() {
  const { examples } = await fetchJson("api/examples");
  for (const example of examples) {
    const option = document.createElement("option");
    option.value = example.name;
    option.textContent = example.label;
    elements.example.append(option);
    exampleClasses.set(example.name, example.classes);
  }
}

function percent(fraction) {
  if (fraction > 0 && fraction < 0.001) {
    return "<0.1%";
  }
  return `${(100 * fraction).toFixed(1)}%`;
}

function swatch(color) {
  const box = document.createElement("span");
  box.className = "swatch";
  box.style.backgroundColor = color;
  return box;
}

function showResult(result) {
  elements.overlay.src = result.overlay;
  elements.overlay.dataset.width = result.width;
  elements.overlay.dataset.height = result.height;
  const latency = `Model time: ${result.latency_ms.toFixed(0)} ms`;
  elements.latency.textContent =
    `${latency} (request ${result.total_ms.toFixed(0)} ms on the server; ${result.width}×${result.height} px, ` +
    `${result.mode === "slide" ? "sliding window" : "whole image"}${result.tta ? ", flip TTA" : ""}, ` +
    `${result.precision})`;

  elements.legend.replaceChildren();
  for (const area of result.areas.filter((item) => item.fraction > 0)) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "class-name";
    name.textContent = area.name;
    item.append(swatch(area.color), name);
    elements.legend.append(item);
  }

  const rows = elements.areas.tBodies[0];
  rows.replaceChildren();
  for (const area of result.areas) {
    const row = rows.insertRow();
    if (area.fraction === 0) {
      row.className = "absent";
    }
    const nameCell = row.insertCell();
    nameCell.append(swatch(area.color), document.createTextNode(` ${area.name}`));
    const shareCell = row.insertCell();
    shareCell.className = "number";
    shareCell.textContent = percent(area.fraction);
  }
  elements.result.hidden = false;
}

async function segment(event) {
  event.preventDefault();
  showError("");
  const file = elements.imageFile.files[0];
  const example = elements.example.value;
  if (!file && !example) {
    showError("Upload an image or pick an example photo first.");
    return;
  }
  const form = new FormData();
  if (file) {
    form.append("image", file, file.name);
  } else {
    form.append("example", example);
  }
  form.append("classes", elements.classes.value);
  form.append("mode", elements.mode.value);
  form.append("tta", elements.tta.checked ? "true" : "false");

  elements.segment.disabled = true;
  elements.status.textContent = "Segmenting…";
  const started = performance.now();
  try {
    const result = await fetchJson("api/segment", { method: "POST", body: form });
    showResult(result);
    elements.status.textContent = `Done in ${(performance.now() - started).toFixed(0)} ms in the browser.`;
  } catch (error) {
    elements.status.textContent = "";
    showError(error.message);
  } finally {
    elements.segment.disabled = false;
  }
}

function init() {
  for (const [key, id] of Object.entries({
    form: "form",
    imageFile: "image-file",
    example: "example",
    preview: "preview",
    classes: "classes",
    vocabularyHint: "vocabulary-hint",
    resetClasses: "reset-classes",
    mode: "mode",
    tta: "tta",
    segment: "segment",
    status: "status",
    error: "error",
    result: "result",
    latency: "latency",
    overlay: "overlay",
    legend: "legend",
    areas: "areas",
    modelInfo: "model-info",
  })) {
    elements[key] = $(id);
  }
  elements.form.addEventListener("submit", segment);
  elements.imageFile.addEventListener("change", () => {
    const file = elements.imageFile.files[0];
    if (file) {
      elements.example.value = "";
    }
    setPreview(file ? URL.createObjectURL(file) : null);
  });
  elements.example.addEventListener("change", () => {
    if (elements.example.value) {
      elements.imageFile.value = "";
      const classes = exampleClasses.get(elements.example.value);
      elements.classes.value = (classes || modelClasses).join(", ");
      setPreview(`api/examples/${encodeURIComponent(elements.example.value)}`);
    } else {
      setPreview(null);
    }
  });
  elements.resetClasses.addEventListener("click", () => {
    elements.classes.value = modelClasses.join(", ");
  });
  Promise.all([loadInfo(), loadExamples()]).catch((error) => {
    showError(`Could not reach the server: ${error.message}`);
  });
}

document.addEventListener("DOMContentLoaded", init);
