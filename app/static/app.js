// The technician's page: send each chosen or dropped image to POST /predict?explain=true, one
// at a time, and show its calibrated probabilities, referral, quality warnings and heatmap.
// Plain browser JavaScript, no libraries, nothing fetched from outside this service.
"use strict";

// The class ids in the model's output order and their names (app/labels.py CLASS_NAMES).
const CLASS_NAMES = {
  benign: "Benign (haematogones)",
  early_pre_b: "Early pre-B ALL",
  pre_b: "Pre-B ALL",
  pro_b: "Pro-B ALL",
};
const WARNING_NAMES = {
  out_of_focus: "Out of focus",
  under_exposed: "Under-exposed",
  over_exposed: "Over-exposed",
  monochrome: "Greyscale",
  cells_too_small: "Cells too small (wider field)",
  not_smear_like: "Not smear-like",
};

const $ = (selector) => document.querySelector(selector);

function authHeaders() {
  const key = $("#api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

async function showModel() {
  try {
    const response = await fetch("/model", { headers: authHeaders() });
    if (!response.ok) {
      $("#model-info").textContent = `Model: not available (HTTP ${response.status})`;
      return;
    }
    const card = await response.json();
    const sha = typeof card.sha256 === "string" ? card.sha256.slice(0, 12) : "?";
    $("#model-info").textContent = `Model: ${card.name} ${card.version} (sha256 ${sha}…)`;
    if (typeof card.intended_use === "string") {
      $("#intended-use").textContent = ` Intended use (model card): ${card.intended_use}`;
    }
  } catch (error) {
    $("#model-info").textContent = "Model: the service did not answer";
  }
}

function newResult(file) {
  const item = $("#result-template").content.firstElementChild.cloneNode(true);
  item.querySelector(".file-name").textContent = file.name;
  const original = item.querySelector(".original");
  // Browsers cannot show every format the service reads (TIFF, or a file that is no image).
  original.addEventListener("error", () => { original.closest("figure").hidden = true; });
  original.src = URL.createObjectURL(file);
  original.alt = `Image sent: ${file.name}`;
  item.dataset.state = "pending";
  $("#results").append(item);
  return item;
}

function renderBars(list, probabilities, label) {
  for (const [id, name] of Object.entries(CLASS_NAMES)) {
    const p = probabilities[id];
    const row = document.createElement("li");
    row.className = id === label ? "bar-row top" : "bar-row";
    row.dataset.classId = id;
    const caption = document.createElement("span");
    caption.className = "bar-name";
    caption.id = `bar-${crypto.randomUUID ? crypto.randomUUID() : Math.random().toString(36).slice(2)}`;
    caption.textContent = name;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", (100 * p).toFixed(1));
    bar.setAttribute("aria-valuetext", percent(p));
    bar.setAttribute("aria-labelledby", caption.id);
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = percent(p);
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = percent(p);
    row.append(caption, bar, value);
    list.append(row);
  }
}

function renderPrediction(item, body) {
  const name = CLASS_NAMES[body.label] || body.label;
  item.querySelector(".label").textContent =
    `Predicted: ${name} (${percent(body.probabilities[body.label])})`;
  const referral = item.querySelector(".referral");
  if (body.refer_to_human) {
    referral.className = "referral refer";
    referral.textContent = `Refer to a human: ${body.refer_reason}`;
  } else {
    referral.className = "referral accept";
    referral.textContent = "No referral: the calibrated confidence reaches the validated threshold.";
  }
  renderBars(item.querySelector(".bars"), body.probabilities, body.label);
  const warnings = item.querySelector(".warnings");
  for (const warning of body.warnings) {
    const entry = document.createElement("li");
    entry.dataset.code = warning.code;
    entry.textContent = `${WARNING_NAMES[warning.code] || warning.code}: ${warning.detail}`;
    warnings.append(entry);
  }
  if (body.explanation) {
    const heatmap = item.querySelector(".heatmap");
    heatmap.src = `data:${body.explanation.media_type};base64,${body.explanation.png_base64}`;
    heatmap.alt = `Heatmap of where the model found evidence for ${CLASS_NAMES[body.explanation.class_id]}`;
  }
}

async function classify(file, item) {
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const response = await fetch("/predict?explain=true", {
      method: "POST", body: form, headers: { Accept: "application/json", ...authHeaders() },
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = body && body.error ? body.error.detail : `HTTP ${response.status}`;
      item.querySelector(".error").textContent = `Not classified: ${detail}`;
      item.querySelector(".heatmap-figure").hidden = true;
      item.dataset.state = "error";
      return null;
    }
    renderPrediction(item, body);
    item.dataset.state = "done";
    return body;
  } catch (error) {
    item.querySelector(".error").textContent = "Not classified: the service did not answer";
    item.dataset.state = "error";
    return null;
  }
}

let queue = Promise.resolve();

function handleFiles(files) {
  const chosen = Array.from(files);
  if (!chosen.length) return;
  const items = chosen.map((file) => [file, newResult(file)]);
  queue = queue.then(async () => {
    let referred = 0;
    let failed = 0;
    for (const [index, [file, item]] of items.entries()) {
      $("#status").textContent = `Classifying ${index + 1} of ${items.length}: ${file.name}`;
      const body = await classify(file, item);
      if (body === null) failed += 1;
      else if (body.refer_to_human) referred += 1;
    }
    $("#status").textContent =
      `Done: ${items.length} image(s), ${referred} referred to a human, ${failed} not classified.`;
  });
}

function setUp() {
  const input = $("#file-input");
  input.addEventListener("change", () => {
    handleFiles(input.files);
    input.value = "";
  });
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    handleFiles(event.dataTransfer.files);
  });
  $("#api-key").addEventListener("change", showModel);  // /model needs the key too, when keys are on
  showModel();
}

document.addEventListener("DOMContentLoaded", setUp);
