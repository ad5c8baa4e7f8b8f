// mebot's web page: fills the model picker from /v1/models, asks /v1/chat/completions with stream: true and shows
// the answer as the model generates it (server-sent events read with fetch + ReadableStream), then its references.
"use strict";

const form = document.getElementById("ask-form");
const question = document.getElementById("question");
const picker = document.getElementById("model");
const button = document.getElementById("ask-button");
const spinner = document.getElementById("spinner");
const statusText = document.getElementById("status-text");
const result = document.getElementById("result");
const answer = document.getElementById("answer");
const referencesSection = document.getElementById("references-section");
const references = document.getElementById("references");
const errorBox = document.getElementById("error");
const announcement = document.getElementById("answer-announcement");

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
    const preferred = (body.data || []).find((m) => m.default === true);  // serve.default_model, resolved
    if (preferred) picker.value = preferred.id;
    picker.dataset.loaded = "true";
  } catch (err) {
    showError("Could not load the list of models.");
  }
}

// Only http(s) URLs become links (never javascript:, data: or file:, whatever an index holds).
function isWebUrl(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:";
  } catch (err) {
    return false;
  }
}

// One reference: a link to the page (its name as text when its URL is not http(s)), and the passage the answer
// was based on, folded.
function reference(source, number) {
  const item = document.createElement("li");
  const link = document.createElement(isWebUrl(source.url) ? "a" : "span");
  if (link.tagName === "A") link.href = source.url;
  link.textContent = source.title || source.url;
  link.className = "reference-link";
  link.setAttribute("aria-label", `Reference ${number}: ${source.title || source.url}`);
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "Passage" + (typeof source.score === "number" ? ` (score ${source.score.toFixed(3)})` : "");
  const text = document.createElement("blockquote");
  text.textContent = source.text || "";
  details.append(summary, text);
  item.append(link, " ", details);
  return item;
}

function showReferences(sources) {
  references.replaceChildren(...sources.map((source, i) => reference(source, i + 1)));
  referencesSection.hidden = sources.length === 0;  // a fine-tuned model answers from its weights: no references
}

// Server-sent events from a fetch response: calls onEvent(data) for every `data:` line; comments are skipped.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart());
      if (data.length && onEvent(data.join("\n")) === false) {
        reader.cancel();
        return;
      }
    }
    if (done) return;
  }
}

async function ask(query) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ model: picker.value, stream: true, messages: [{ role: "user", content: query }] }),
  });
  if (!response.ok) {
    let message = `The server answered ${response.status}.`;
    try {
      const body = await response.json();
      message = (body.error && body.error.message) || message;
    } catch (err) { /* not JSON: keep the status */ }
    showError(message);
    setBusy(false, "");
    return;
  }
  const text = document.createTextNode("");
  answer.replaceChildren(text);
  answer.setAttribute("aria-busy", "true");
  showReferences([]);
  let finished = false;
  await readEvents(response, (data) => {
    if (data === "[DONE]") return false;
    const chunk = JSON.parse(data);
    if (chunk.error) {
      showError(chunk.error.message || "The answer failed.");
      return false;
    }
    const choice = (chunk.choices || [])[0] || {};
    const piece = (choice.delta || {}).content;
    if (piece) {
      text.appendData(piece);
      result.hidden = false;
      setBusy(true, "Answering…");
    }
    if (choice.finish_reason) {
      finished = true;
      if (typeof chunk.text === "string") text.data = chunk.text;  // the whole answer, as the server has it
      showReferences(chunk.sources || []);
      result.hidden = false;
      document.dispatchEvent(new CustomEvent("mebot:answered", { detail: { id: chunk.id } }));  // feedback.js
    }
    return true;
  });
  answer.setAttribute("aria-busy", "false");
  setBusy(false, finished ? "Answered." : "");
  if (finished) announcement.textContent = text.data;  // the whole answer once, not every piece as it streams
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = question.value.trim();
  if (!query) { question.focus(); return; }
  if (button.disabled) return;  // an answer is still coming
  errorBox.hidden = true;
  result.hidden = true;
  announcement.textContent = "";
  setBusy(true, "Thinking…");
  try {
    await ask(query);
  } catch (err) {
    showError("The request failed; is the server running?");
    setBusy(false, "");
  }
});

// Enter sends, Shift+Enter starts a new line (and Enter while an input method is composing is left alone).
question.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

loadModels();
