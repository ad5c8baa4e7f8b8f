// 👍/👎 and an optional comment under each answer: POST /api/feedback with the id the answer came with (the
// streamed completion's id). Shown once an answer has finished (app.js dispatches "mebot:answered").
"use strict";

(() => {
  const box = document.getElementById("feedback");
  const up = document.getElementById("feedback-up");
  const down = document.getElementById("feedback-down");
  const comment = document.getElementById("feedback-comment");
  const send = document.getElementById("feedback-send");
  const status = document.getElementById("feedback-status");
  let answerId = null;
  let rating = null;

  function press(value) {
    rating = value;
    up.setAttribute("aria-pressed", value === "up" ? "true" : "false");
    down.setAttribute("aria-pressed", value === "down" ? "true" : "false");
  }

  async function post() {
    if (!answerId || !rating) {
      status.textContent = "Pick 👍 or 👎 first.";
      return;
    }
    try {
      const response = await fetch("/api/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ id: answerId, rating: rating, comment: comment.value.trim() }),
      });
      status.textContent = response.ok ? "Thank you: your feedback was sent." : `Feedback not sent (${response.status}).`;
    } catch (err) {
      status.textContent = "Feedback not sent: is the server running?";
    }
  }

  document.addEventListener("mebot:answered", (event) => {
    answerId = event.detail && event.detail.id;
    press(null);
    comment.value = "";
    status.textContent = "";
    box.hidden = !answerId;
  });
  document.getElementById("ask-form").addEventListener("submit", () => {
    box.hidden = true;
    answerId = null;
  });
  up.addEventListener("click", () => { press("up"); post(); });
  down.addEventListener("click", () => { press("down"); post(); });
  send.addEventListener("click", post);
})();
