// The demo page: pick or drop an image, POST it raw to the prediction endpoint, show the caption,
// the time taken and the last captions. Text from the server or a file name goes in as textContent only.
"use strict";

const PREDICT_URL = "/api/v1/predictions";
const RECENT_KEY = "captioner.recent";
const API_KEY_KEY = "captioner.apiKey";
const RECENT_MAX = 10;
const THUMB_PX = 64;

const byId = (id) => document.getElementById(id);
let current = null; // the upload on screen: { controller, previewUrl }
let recent = loadRecent();

function show({ status = "", caption = "", timing = "", error = "" }) {
  byId("status").textContent = status;
  byId("caption").textContent = caption;
  byId("timing").textContent = timing;
  byId("error").textContent = error;
}

// A new file replaces the upload on screen: its request is aborted and its preview released.
function replaceCurrent(file, previewable) {
  if (current) {
    current.controller.abort();
    if (current.previewUrl) URL.revokeObjectURL(current.previewUrl);
  }
  const preview = byId("preview");
  const previewUrl = previewable ? URL.createObjectURL(file) : "";
  preview.hidden = !previewable;
  preview.alt = previewable ? `Preview of ${file.name}` : "";
  preview.src = previewUrl;
  current = { controller: new AbortController(), previewUrl };
  return current;
}

function requestHeaders(file) {
  const headers = { "Content-Type": file.type || "application/octet-stream" };
  const key = sessionStorage.getItem(API_KEY_KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function captionFile(file) {
  // A file the browser knows is not a picture is not sent; one of unknown type is, and the server judges.
  if (file.type && !file.type.startsWith("image/")) {
    replaceCurrent(file, false);
    show({ error: `“${file.name}” is not an image (${file.type}). Choose a JPEG, PNG, WebP, GIF, BMP or TIFF picture.` });
    return;
  }
  const upload = replaceCurrent(file, true);
  show({ status: `Captioning “${file.name}”…` });
  const started = performance.now();
  let response;
  let body = null;
  try {
    response = await fetch(PREDICT_URL, {
      method: "POST", body: file, headers: requestHeaders(file), signal: upload.controller.signal,
    });
    body = await response.json().catch(() => null);
  } catch (error) {
    if (upload === current) show({ error: "Could not reach the server. Check the connection and try again." });
    return;
  }
  if (upload !== current) return;
  const ms = Math.round(performance.now() - started);
  if (!response.ok || !body || typeof body.title !== "string") {
    show({ error: `Could not caption “${file.name}”: ${errorMessage(response, body)}` });
    return;
  }
  show({ caption: body.title, timing: timingText(ms, body) });
  addRecent({ title: body.title, ms, name: file.name, thumb: await thumbnail(file) });
}

function errorMessage(response, body) {
  const message = body && body.error && body.error.message;
  const text = typeof message === "string" && message ? message : `the server answered ${response.status}.`;
  if (response.status === 401 || response.status === 403) {
    byId("key-box").open = true;
    return `${text} Enter an API key above.`;
  }
  return text;
}

function timingText(ms, body) {
  const server = [];
  if (typeof body.latency_ms === "number") server.push(`API ${Math.round(body.latency_ms)} ms`);
  if (typeof body.inference_ms === "number") server.push(`model ${Math.round(body.inference_ms)} ms`);
  return `Took ${ms} ms${server.length ? ` (${server.join(", ")})` : ""}.`;
}

async function thumbnail(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = THUMB_PX / Math.max(bitmap.width, bitmap.height);
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    return canvas.toDataURL("image/jpeg", 0.8);
  } catch {
    return ""; // no thumbnail; the title still goes on the list
  }
}

function loadRecent() {
  try {
    const items = JSON.parse(sessionStorage.getItem(RECENT_KEY) || "[]");
    return Array.isArray(items) ? items.slice(0, RECENT_MAX) : [];
  } catch {
    return [];
  }
}

function addRecent(item) {
  recent = [item, ...recent].slice(0, RECENT_MAX);
  try {
    sessionStorage.setItem(RECENT_KEY, JSON.stringify(recent));
  } catch {
    // storage full or switched off: the list lives in this page only
  }
  renderRecent();
}

function renderRecent() {
  byId("recent").replaceChildren(...recent.map(recentItem));
  byId("recent-empty").hidden = recent.length > 0;
}

function recentItem({ title, ms, name, thumb }) {
  const item = document.createElement("li");
  const image = document.createElement("img");
  image.alt = ""; // the title beside it says what the picture shows
  if (typeof thumb === "string" && thumb.startsWith("data:image/")) image.src = thumb;
  const text = document.createElement("span");
  text.className = "title";
  text.textContent = String(title);
  text.title = String(name);
  const time = document.createElement("span");
  time.className = "ms";
  time.textContent = `${Number(ms)} ms`;
  item.append(image, text, time);
  return item;
}

function init() {
  const drop = byId("drop");
  const input = byId("file");
  const key = byId("key");
  input.addEventListener("change", () => input.files[0] && captionFile(input.files[0]));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) captionFile(file);
  });
  // A file dropped beside the zone must not make the browser navigate away to it.
  for (const name of ["dragover", "drop"]) window.addEventListener(name, (event) => event.preventDefault());
  byId("preview").addEventListener("error", () => { byId("preview").hidden = true; });
  key.value = sessionStorage.getItem(API_KEY_KEY) || "";
  key.addEventListener("input", () => sessionStorage.setItem(API_KEY_KEY, key.value.trim()));
  renderRecent();
}

init(); // the script is deferred: the document is parsed
