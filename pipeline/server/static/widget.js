// mebot's widget for the person's own site: <script src="https://bot.example/widget.js" defer></script> adds an
// "Ask <name>" button and a panel that asks this server (/v1/chat/completions, streamed as on the bot's own page)
// across origins; the site must be in serve.allowed_origins. Everything lives in a shadow root with its own style
// sheet, so the site's CSS does not reach it and its CSS does not reach the site. Options, as data- attributes on
// the script tag: data-model (default: the server's, serve.default_model), data-name (the name on the button), data-position ("left"/"right").
(function () {
  "use strict";
  const script = document.currentScript;
  if (!script || script.dataset.mebotLoaded) return;
  script.dataset.mebotLoaded = "true";

  const PERSONA = "{{persona_name}}";  // persona.name, filled in by the server
  const name = script.dataset.name || PERSONA;
  let model = script.dataset.model || "";  // empty: the one /v1/models marks as the default, asked once
  const left = script.dataset.position === "left";
  const base = new URL(".", script.src);
  const endpoint = new URL("v1/chat/completions", base).href;
  // Earlier turns sent with a question, well inside the server's limits (serve.max_messages, max_messages_chars).
  const MAX_HISTORY_MESSAGES = 20;
  const MAX_HISTORY_CHARS = 8000;

  const CSS = `
    .mebot { all: initial; font: 15px/1.4 system-ui, sans-serif; color: #1d1d1b; position: fixed; bottom: 1rem;
      ${left ? "left" : "right"}: 1rem; z-index: 2147483000; display: flex; flex-direction: column-reverse;
      align-items: ${left ? "flex-start" : "flex-end"}; gap: 0.5rem; }
    :where(.mebot *) { box-sizing: border-box; font: inherit; color: inherit; }
    button { all: revert; font: inherit; cursor: pointer; border-radius: 1.2rem; border: 0; padding: 0.5rem 1rem;
      background: #2a6f97; color: #fff; }
    button:disabled { cursor: wait; opacity: 0.6; }
    button.close { background: transparent; color: #1d1d1b; padding: 0.1rem 0.5rem; font-size: 1.2rem; }
    :focus-visible { outline: 3px solid #f4a259; outline-offset: 2px; }
    .panel { width: min(24rem, calc(100vw - 2rem)); max-height: min(34rem, calc(100vh - 5rem)); display: flex;
      flex-direction: column; background: #fff; border: 1px solid #ccc; border-radius: 0.6rem;
      box-shadow: 0 4px 18px rgba(0, 0, 0, 0.2); }
    .panel[hidden] { display: none; }
    header { display: flex; justify-content: space-between; align-items: center; padding: 0.4rem 0.6rem 0.4rem 0.9rem;
      border-bottom: 1px solid #eee; }
    h2 { all: unset; font-weight: 600; }
    .turns { list-style: none; margin: 0; padding: 0.5rem 0.9rem; overflow: auto; flex: 1; }
    .turns > li { margin-bottom: 0.8rem; }
    .question { font-weight: 600; margin: 0 0 0.25rem; white-space: pre-wrap; }
    .answer { margin: 0; white-space: pre-wrap; border-left: 3px solid #2a6f97; padding-left: 0.5rem; }
    .answer[aria-busy=true]::after { content: "\\258D"; color: #2a6f97; }
    .references { margin: 0.3rem 0 0; padding-left: 1.3rem; font-size: 0.85rem; }
    a { color: #2a6f97; }
    form { display: flex; flex-direction: column; gap: 0.25rem; padding: 0.6rem 0.9rem; border-top: 1px solid #eee; }
    label { font-weight: 600; }
    textarea { width: 100%; resize: vertical; padding: 0.4rem; border: 1px solid #999; border-radius: 0.3rem;
      background: #fff; }
    .row { display: flex; justify-content: space-between; align-items: center; gap: 0.5rem; }
    .hint, .status { font-size: 0.8rem; color: #555; margin: 0; }
    .status { padding: 0 0.9rem 0.5rem; min-height: 1em; }
    .error { color: #a4161a; font-weight: 600; margin: 0; padding: 0 0.9rem 0.5rem; }
    .error[hidden] { display: none; }
    .visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0);
      white-space: nowrap; }
  `;

  function element(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (value === true) node.setAttribute(key, "");
      else if (value !== false && value != null) node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  }

  // A constructed style sheet needs no 'unsafe-inline' in the site's Content-Security-Policy.
  function addStyles(root) {
    try {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      root.adoptedStyleSheets = [sheet];
    } catch (err) {
      root.append(element("style", {}, CSS));
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
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
        if (data.length && onEvent(data.join("\n")) === false) {
          reader.cancel();
          return;
        }
      }
      if (done) return;
    }
  }

  const host = document.createElement("mebot-widget");
  host.style.setProperty("all", "initial", "important");  // the site's rules for the element itself lose
  const root = host.attachShadow({ mode: "open" });
  addStyles(root);

  const launcher = element("button", { type: "button", class: "launcher", "aria-expanded": "false",
    "aria-controls": "panel" }, `Ask ${name}`);
  const close = element("button", { type: "button", class: "close", "aria-label": "Close" }, "\u00d7");
  const turns = element("ol", { class: "turns", "aria-label": "Conversation" });
  const question = element("textarea", { id: "question", rows: "2", "aria-describedby": "keys-help" });
  const ask = element("button", { type: "submit" }, "Ask");
  const form = element("form", {},
    element("label", { for: "question" }, "Your question"), question,
    element("div", { class: "row" }, element("p", { id: "keys-help", class: "hint" },
      "Enter sends; Shift+Enter starts a new line; Escape closes."), ask));
  const status = element("p", { class: "status", role: "status", "aria-live": "polite" });
  const announcement = element("p", { class: "visually-hidden", "aria-live": "polite", "data-announcement": true });
  const errorBox = element("p", { class: "error", role: "alert", hidden: true });
  const panel = element("section", { id: "panel", class: "panel", role: "dialog", "aria-labelledby": "title",
    hidden: true },
  element("header", {}, element("h2", { id: "title" }, `Ask ${name}`), close), turns, form, status, errorBox,
  announcement);
  root.append(element("div", { class: "mebot" }, launcher, panel));

  const history = [];  // the conversation so far, as /v1 messages

  function open() {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    question.focus();
  }

  function closePanel() {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    launcher.focus();
  }

  function references(sources) {
    const list = element("ol", { class: "references", "aria-label": "References" });
    sources.forEach((source) => {
      const label = source.title || source.url || "";
      const link = isWebUrl(source.url)
        ? element("a", { href: source.url, target: "_blank", rel: "noopener noreferrer" }, label)
        : element("span", {}, label);
      list.append(element("li", {}, link));
    });
    return list;
  }

  // The earlier turns, oldest dropped first, to stay well inside the server's limit on a conversation's size.
  function earlierTurns() {
    const kept = [];
    let chars = 0;
    for (let i = history.length - 1; i >= 0 && kept.length < MAX_HISTORY_MESSAGES; i--) {
      chars += history[i].content.length;
      if (chars > MAX_HISTORY_CHARS) break;
      kept.unshift(history[i]);
    }
    return kept;
  }

  async function chosenModel() {
    if (model) return model;
    try {
      const response = await fetch(new URL("v1/models", base).href, { mode: "cors", credentials: "omit" });
      const preferred = ((await response.json()).data || []).find((entry) => entry.default === true);
      model = preferred ? preferred.id : "rag";
      return model;
    } catch (err) {
      return "rag";  // the request for the answer says what is wrong
    }
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      return (body.error && body.error.message) || `The server answered ${response.status}.`;
    } catch (err) {
      return `The server answered ${response.status}.`;
    }
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    status.textContent = "";
  }

  async function send(query) {
    const answer = element("p", { class: "answer", "aria-busy": "true" });
    const turn = element("li", {}, element("p", { class: "question" }, query), answer);
    turns.append(turn);
    turn.scrollIntoView({ block: "nearest" });
    const text = document.createTextNode("");
    answer.append(text);
    const messages = [...earlierTurns(), { role: "user", content: query }];
    let finished = false;
    // One server-sent event of the answer's stream; false stops reading.
    function onEvent(data) {
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
        status.textContent = "Answering\u2026";
        turns.scrollTop = turns.scrollHeight;
      }
      if (choice.finish_reason) {
        finished = true;
        if (typeof chunk.text === "string") text.data = chunk.text;
        const sources = chunk.sources || [];
        if (sources.length) turn.append(references(sources));
        turns.scrollTop = turns.scrollHeight;
      }
      return true;
    }

    try {
      const response = await fetch(endpoint, {
        method: "POST",
        mode: "cors",
        credentials: "omit",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ model: await chosenModel(), stream: true, messages }),
      });
      if (!response.ok) showError(await errorMessage(response));
      else await readEvents(response, onEvent);
    } catch (err) {
      showError(`${name}'s bot could not be reached from this page.`);
    } finally {
      answer.setAttribute("aria-busy", "false");
    }
    if (finished) {
      history.push({ role: "user", content: query }, { role: "assistant", content: text.data });
      status.textContent = "Answered.";
      announcement.textContent = text.data;
    } else if (!text.data) {
      turn.remove();
    }
    return finished;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = question.value.trim();
    if (!query || ask.disabled) return;
    errorBox.hidden = true;
    ask.disabled = true;
    form.setAttribute("aria-busy", "true");
    status.textContent = "Thinking\u2026";
    announcement.textContent = "";
    question.value = "";
    try {
      if (!(await send(query)) && !question.value) question.value = query;  // not lost: ask again with Enter
    } finally {
      ask.disabled = false;
      form.setAttribute("aria-busy", "false");
      if (!panel.hidden) question.focus();
    }
  });

  question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  launcher.addEventListener("click", () => (panel.hidden ? open() : closePanel()));
  close.addEventListener("click", closePanel);
  root.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !panel.hidden) {
      event.preventDefault();
      closePanel();
    }
  });

  function attach() {
    document.body.append(host);
  }
  if (document.body) attach();
  else document.addEventListener("DOMContentLoaded", attach);
})();
