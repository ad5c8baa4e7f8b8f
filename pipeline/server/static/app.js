// mebot's web page: fills the model picker from /v1/models, asks /api, shows the answer and its references.
"use strict";

const form = document.getElementById("ask-form");
const question = document.getElementById("question");
const picker = document.getElementById("model");
const button = document.getElementById("ask-button");
const spinner = document.getElementById("spinner");
const statusText = document.getElementById("status-text");
const result = document.getElementById("result");
const answer = document.getElementById("answer");
const references = document.getElementById("references");
const errorBox = document.getElementById("error");

function setBusy(busy, text) {
  spinner.hidden = !busy;
  button.disabled = busy;
  form.setAttribute("aria-busy", busy ? "true" : "false");
  statusText.textContent = text || "";
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models");
    const body = await response.json();
    const names = (body.data || []).map((m) => m.id);
    if (names.length === 0) {
      showError("The bot is not ready yet: no index has been built (run `make run` first).");
      return;
    }
    picker.replaceChildren(...names.map((name) => new Option(name, name)));
    picker.dataset.loaded = "true";
  } catch (err) {
    showError("Could not load the list of models.");
  }
}

function reference(doc, number) {
  const meta = doc.metadata || {};
  const item = document.createElement("li");
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = `${meta.title || meta.url}` + (doc.score !== undefined ? ` (score ${doc.score.toFixed(3)})` : "");
  const link = document.createElement("a");
  link.href = meta.url;
  link.textContent = meta.url;
  link.className = "reference-link";
  link.setAttribute("aria-label", `Reference ${number}: ${meta.title || meta.url}`);
  const text = document.createElement("blockquote");
  text.textContent = doc.pageContent || "";
  details.append(summary, link, text);
  item.append(details);
  return item;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = question.value.trim();
  if (!query) { question.focus(); return; }
  errorBox.hidden = true;
  result.hidden = true;
  setBusy(true, "Thinking…");
  try {
    const url = `/api?query=${encodeURIComponent(query)}&model=${encodeURIComponent(picker.value)}`;
    const response = await fetch(url);
    const body = await response.json();
    if (!response.ok) {
      showError((body.error && body.error.message) || `The server answered ${response.status}.`);
      setBusy(false, "");
      return;
    }
    answer.textContent = body.text;
    references.replaceChildren(...(body.sourceDocuments || []).map((doc, i) => reference(doc, i + 1)));
    result.hidden = false;
    setBusy(false, "Answered.");
  } catch (err) {
    showError("The request failed; is the server running?");
    setBusy(false, "");
  }
});

loadModels();
