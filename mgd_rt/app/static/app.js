// The page talks to the same HTTP API as every other client: one POST /v1/segment per photo and format.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { token: sessionStorage.getItem("mgd-rt-token") || "", photos: [] };

function headers() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function errorText(response) {
  // FastAPI answers {"detail": "..."} for our errors and a list of field problems for query validation
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return body.detail.map((d) => `${d.loc.join(".")}: ${d.msg}`).join("; ");
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function needToken() {
  $("#token-row").hidden = false;
  $("#token").focus();
}

async function loadModel() {
  const response = await fetch("/v1/model", { headers: headers() });
  if (response.status === 401) {
    $("#model").textContent = "the API needs a token: enter it below";
    needToken();
    return;
  }
  if (!response.ok) {
    $("#model").textContent = `model facts unavailable: ${await errorText(response)}`;
    return;
  }
  const m = await response.json();
  $("#model").textContent = `MGD-SAM2 ${m.variant} at ${m.image_size}, ${m.precision}, ${m.backend} on ${m.device}`;
  $("#tile").disabled = !m.tile;
}

async function segment(file, format) {
  const query = new URLSearchParams({ format, threshold: $("#threshold").value, tile: $("#tile").checked });
  const response = await fetch(`/v1/segment?${query}`, {
    method: "POST",
    headers: { ...headers(), "Content-Type": file.type || "application/octet-stream" },
    body: file,
  });
  if (response.status === 401) needToken();
  if (!response.ok) throw new Error(await errorText(response));
  return URL.createObjectURL(await response.blob());
}

function setImage(card, cls, url, download, name) {
  const img = card.querySelector(`img.${cls}`);
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = url;
  if (download) {
    const link = card.querySelector(`a.dl-${cls}`);
    link.href = url;
    link.download = name;
  }
}

function updateProgress() {
  const done = state.photos.filter((p) => p.finished).length;
  const failed = state.photos.filter((p) => p.failed).length;
  const total = state.photos.length;
  $("#progress").textContent = total === 0 ? "" :
    `${done} of ${total} done${failed ? `, ${failed} failed` : ""}${done < total ? " — the model is running…" : ""}`;
}

async function run(photo) {
  const { card, file } = photo;
  const stem = file.name.replace(/\.[^.]+$/, "") || "photo";
  const status = card.querySelector(".status .text");
  const error = card.querySelector(".error");
  card.classList.remove("done", "failed");
  error.hidden = true;
  photo.finished = photo.failed = false;
  updateProgress();
  const started = performance.now();
  const timer = setInterval(() => {
    status.textContent = `segmenting… ${((performance.now() - started) / 1000).toFixed(1)} s`;
  }, 100);
  try {
    // three answers of one model run each; requests sent together share a batch on the server
    const [matte, cutout, overlay] = await Promise.all(
      ["matte", "rgba", "overlay"].map((format) => segment(file, format)));
    setImage(card, "matte", matte, true, `${stem}.matte.png`);
    setImage(card, "cutout", cutout, true, `${stem}.cutout.png`);
    setImage(card, "overlay", overlay, true, `${stem}.overlay.jpg`);
    card.querySelector("img.cutout-view").src = cutout;
    card.querySelector(".panels").hidden = false;
    card.querySelector(".compare").hidden = false;
    status.textContent = `done in ${((performance.now() - started) / 1000).toFixed(2)} s`;
    card.classList.add("done");
  } catch (exc) {
    error.textContent = exc.message;
    error.hidden = false;
    status.textContent = "failed";
    card.classList.add("failed");
    photo.failed = true;
  } finally {
    clearInterval(timer);
    photo.finished = true;
    updateProgress();
  }
}

function addPhotos(files) {
  for (const file of files) {
    const card = $("#card").content.firstElementChild.cloneNode(true);
    card.querySelector(".name").textContent = file.name;
    const original = URL.createObjectURL(file);
    card.querySelector("img.original").src = original;
    card.querySelector("img.before").src = original;
    const after = card.querySelector(".after");
    card.querySelector(".slider").addEventListener("input", (event) => {
      after.style.clipPath = `inset(0 0 0 ${event.target.value}%)`;
    });
    $("#results").prepend(card);
    const photo = { card, file, finished: false, failed: false };
    state.photos.push(photo);
    run(photo);
  }
}

function rerunAll() {
  for (const photo of state.photos) run(photo);
}

$("#files").addEventListener("change", (event) => {
  addPhotos(event.target.files);
  event.target.value = "";  // picking the same file again still fires change
});
const drop = $("#drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  addPhotos(event.dataTransfer.files);
});
drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("#files").click(); });
$("#threshold").addEventListener("input", () => {
  $("#threshold-value").textContent = Number($("#threshold").value).toFixed(2);
});
$("#threshold").addEventListener("change", rerunAll);
$("#tile").addEventListener("change", rerunAll);
$("#token").addEventListener("change", () => {
  state.token = $("#token").value.trim();
  sessionStorage.setItem("mgd-rt-token", state.token);
  loadModel();
  rerunAll();
});
loadModel();
