// The review page: plain JavaScript, no build step, no third-party code (hospital networks are often offline).
// It calls the service's own API: POST predict?explain=true for the result and the heatmap, POST ui/preview for
// the image as the server decoded it. Paths are relative, so the page also works behind a path prefix.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("upload-form");
  const fileInput = $("file-input");
  const dropZone = $("drop-zone");
  const keyRow = $("key-row");
  const keyInput = $("api-key");
  const explainBox = $("explain");
  const submit = $("submit");
  const statusLine = $("status");
  const opacity = $("opacity");
  const pointChoice = $("point-choice");
  let chosen = null;
  let previewUrl = null;

  // Error codes of the API (docs/api.md) in plain words; the server's own message follows as the detail.
  const PLAIN = {
    unsupported_format: "This file is not an image the service can read. Send a PNG, JPEG or DICOM chest X-ray.",
    undecodable_image: "The file could not be read as an image: it may be damaged, empty or not an image at all.",
    unusable_image: "The image can be read but cannot be analysed.",
    image_too_large: "The image has too many pixels for this service.",
    upload_too_large: "The file is larger than this service accepts.",
    not_a_chest_xray: "Refused: this does not look like a frontal chest X-ray, so the model gives no result for it.",
    unauthorized: "The service needs a valid API key. Enter it in the API key field and try again.",
    overloaded: "The service is busy. Please try again in a moment.",
    not_ready: "The service is starting or restarting. Please try again in a moment.",
    explanation_unavailable: "The model cannot produce a heatmap. Untick the heatmap option and try again.",
    unknown_operating_point: "The chosen operating point does not exist in the model now served. Reload the page.",
    invalid_request: "The request was not accepted by the service.",
    invalid_input: "The request was not accepted by the service.",
  };

  function setStatus(text) { statusLine.textContent = text; }

  function showError(code, message, requestId) {
    $("error-title").textContent = PLAIN[code] || "The service could not analyse this file.";
    $("error-detail").textContent = message ? "Details: " + message : "";
    $("error-id").textContent = requestId ? "Request id: " + requestId : "";
    $("error").hidden = false;
  }

  function clearAll() {
    $("error").hidden = true;
    $("result").hidden = true;
    $("viewer-panel").hidden = true;
    $("overlay").hidden = true;
    $("overlay").removeAttribute("src");
    $("opacity-row").hidden = true;
    $("warnings").hidden = true;
    if (previewUrl) { URL.revokeObjectURL(previewUrl); previewUrl = null; }
  }

  function headers() {
    const key = keyInput.value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  async function post(path, file) {
    const body = new FormData();
    body.append("file", file, file.name);
    return fetch(path, { method: "POST", body: body, headers: headers() });
  }

  async function readError(response) {
    let code = "", message = "", requestId = response.headers.get("X-Request-ID") || "";
    try {
      const body = await response.json();
      if (body && body.error) {
        code = body.error.code; message = body.error.message; requestId = body.error.request_id || requestId;
      }
    } catch (ignored) {
      message = "HTTP " + response.status + " " + response.statusText;
    }
    return { code: code, message: message, requestId: requestId };
  }

  function percent(p) { return (100 * p).toFixed(1) + "%"; }

  function renderProbabilities(body) {
    const list = $("probabilities");
    list.replaceChildren();
    for (const [name, p] of Object.entries(body.probabilities)) {
      const item = document.createElement("li");
      item.className = "probability";
      item.dataset.className = name;
      const label = document.createElement("div");
      label.className = "probability-label";
      const title = document.createElement("span");
      title.textContent = name;
      const value = document.createElement("span");
      value.className = "probability-value";
      value.textContent = percent(p);
      label.append(title, value);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.setAttribute("role", "img");
      let description = name + ": probability " + percent(p);
      const fill = document.createElement("div");
      fill.className = "bar-fill";
      fill.style.width = Math.max(0, Math.min(100, 100 * p)) + "%";
      bar.append(fill);
      item.append(label, bar);
      if (name === body.positive_class) {
        const mark = document.createElement("div");
        mark.className = "threshold";
        mark.style.left = "calc(" + (100 * body.threshold) + "% - 1px)";
        bar.append(mark);
        const note = document.createElement("div");
        note.className = "threshold-label";
        note.textContent = "Decision threshold " + percent(body.threshold) + " (black mark): at or above it, " +
          name + " is reported";
        item.append(note);
        description += ", decision threshold " + percent(body.threshold);
      }
      bar.setAttribute("aria-label", description);
      list.append(item);
    }
  }

  function renderResult(body, wantedMap) {
    const decision = $("decision");
    const positive = body.prediction === body.positive_class;
    decision.className = "decision " + (positive ? "positive" : "negative");
    decision.replaceChildren(document.createTextNode(body.prediction));
    const why = document.createElement("small");
    const p = body.probabilities[body.positive_class];
    why.textContent = "P(" + body.positive_class + ") " + percent(p) + (positive ? " is at or above" : " is below") +
      " the decision threshold " + percent(body.threshold) + " (operating point " + body.operating_point + ")";
    decision.append(why);

    renderProbabilities(body);
    const warnings = body.warnings || [];
    const list = $("warning-list");
    list.replaceChildren(...warnings.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    }));
    $("warnings").hidden = warnings.length === 0;

    $("model").textContent = body.model.name + " version " + body.model.version + " (sha256 " +
      body.model.sha256.slice(0, 12) + "…" + (body.model.runtime ? ", runtime " + body.model.runtime : "") + ")";
    $("request-id").textContent = body.request_id;
    const site = body.calibration && body.calibration.site_calibration;
    $("operating-point").textContent = body.operating_point + ", threshold " + percent(body.threshold) + "; " +
      (site ? "calibrated for this site (" + site.method + " intercept " + site.intercept.toFixed(3) + ", slope " +
              site.slope.toFixed(3) + ")" : "no site calibration");

    const explanation = body.explanation;
    if (explanation) {
      const overlay = $("overlay");
      overlay.src = "data:image/png;base64," + explanation.overlay_png;
      overlay.hidden = false;
      $("opacity-row").hidden = false;
      applyOpacity();
      $("explained").textContent = "Grad-CAM on layer " + explanation.layer + ": warmer colours mark where the " +
        "image raised the " + body.positive_class + " score most. It shows where the model looked, not a finding.";
    } else {
      $("explained").textContent = wantedMap ? "none for this image" : "not requested";
    }
    $("result").hidden = false;
  }

  function applyOpacity() {
    $("overlay").style.opacity = String(opacity.value / 100);
    $("opacity-value").textContent = opacity.value + "%";
  }

  async function analyse(file) {
    clearAll();
    if (!file) { setStatus("Choose a file first."); return; }
    const wantedMap = explainBox.checked;
    submit.disabled = true;
    setStatus("Analysing " + file.name + "…");
    try {
      const query = new URLSearchParams();
      if (wantedMap) { query.set("explain", "true"); }
      if (!$("point-row").hidden && pointChoice.value) { query.set("operating_point", pointChoice.value); }
      const [prediction, preview] = await Promise.all([
        post("predict" + (query.toString() ? "?" + query.toString() : ""), file),
        post("ui/preview", file),
      ]);
      if (preview.ok) {
        previewUrl = URL.createObjectURL(await preview.blob());
        $("image").src = previewUrl;
        $("caption").textContent = file.name + ", shown as the server decoded it" +
          (wantedMap ? "; use the slider to fade the heatmap." : ".");
        $("viewer-panel").hidden = false;
      }
      if (prediction.ok) {
        renderResult(await prediction.json(), wantedMap);
        setStatus("Result ready for " + file.name + ".");
      } else {
        const error = await readError(prediction);
        showError(error.code, error.message, error.requestId);
        setStatus("No result for " + file.name + ".");
      }
    } catch (failure) {
      showError("", "the service could not be reached (" + failure.message + ")", "");
      setStatus("No result.");
    } finally {
      submit.disabled = false;
    }
  }

  fileInput.addEventListener("change", () => {
    chosen = fileInput.files[0] || null;
    if (chosen) { analyse(chosen); }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    analyse(chosen || fileInput.files[0]);
  });
  opacity.addEventListener("input", applyOpacity);

  // Fit the image to the panel (small uploads scaled up, tall ones kept within the window); the overlay follows.
  function fitImage() {
    const image = $("image");
    if (!image.naturalWidth) { return; }
    const aspect = image.naturalWidth / image.naturalHeight;
    const width = Math.min(image.closest("figure").clientWidth, 0.75 * window.innerHeight * aspect);
    image.style.width = Math.floor(width) + "px";
  }
  $("image").addEventListener("load", fitImage);
  window.addEventListener("resize", fitImage);

  for (const name of ["dragenter", "dragover"]) {
    dropZone.addEventListener(name, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    dropZone.addEventListener(name, () => dropZone.classList.remove("dragging"));
  }
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) {
      chosen = file;
      analyse(file);
    }
  });

  fetch("ui/config").then((r) => (r.ok ? r.json() : null)).then((config) => {
    if (config && config.api_key_required) { keyRow.hidden = false; }
    const points = (config && config.operating_points) || [];
    if (points.length > 1) {  // a choice only where the version has several (a site-calibrated version)
      pointChoice.replaceChildren(...points.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name + (name === config.default_operating_point ? " (default)" : "");
        option.selected = name === config.default_operating_point;
        return option;
      }));
      $("point-row").hidden = false;
    }
  }).catch(() => { keyRow.hidden = false; });
})();
