// The chat page: receives messages from tidings with centrifuge-js, sends them through Django.
//
// - Django authenticates: getToken fetches a connection token from /token/ (the session cookie
//   identifies the user); tidings checks it with the shared secret.
// - tidings delivers: the page subscribes to the lobby channel, shows its history on entry,
//   live publications after that, and recovers what it missed after a reconnect.
// - Django decides what gets published: the form POSTs to /send/, which validates the message
//   and publishes it through tidings' server API. Browsers are not allowed to publish directly.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const messages = document.getElementById("messages");
  const statusEl = document.getElementById("status");
  const presenceEl = document.getElementById("presence");
  const errorEl = document.getElementById("error");
  const form = document.getElementById("composer");
  const input = document.getElementById("text");
  const csrfToken = form.querySelector("input[name=csrfmiddlewaretoken]").value;

  const HISTORY_LIMIT = 50;
  let epoch = null; // the stream generation the shown messages belong to

  function showError(text) {
    errorEl.textContent = text;
    errorEl.hidden = !text;
  }

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text;
  }

  // Messages are kept in offset order, each offset shown once: history and live
  // publications may overlap while the page loads or recovers.
  function addMessage(pub) {
    const data = pub.data || {};
    const offset = Number(pub.offset || 0);
    if (offset && messages.querySelector(`li[data-offset="${offset}"]`)) {
      return;
    }
    const item = document.createElement("li");
    item.dataset.offset = String(offset);
    if (data.user === config.user) {
      item.classList.add("mine");
    }
    const author = document.createElement("span");
    author.className = "author";
    author.textContent = data.user || "?";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = data.text || "";
    item.append(author, text);

    let before = null;
    if (offset) {
      for (const other of messages.children) {
        if (Number(other.dataset.offset) > offset) {
          before = other;
          break;
        }
      }
    }
    const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
    messages.insertBefore(item, before);
    if (atBottom || data.user === config.user) {
      messages.scrollTop = messages.scrollHeight;
    }
  }

  async function getToken() {
    const response = await fetch(config.tokenUrl, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (response.status === 401 || response.status === 403) {
      // Logged out (or the session expired): stop reconnecting, go log in again.
      window.location.assign(`${config.loginUrl}?next=${encodeURIComponent(location.pathname)}`);
      throw new Centrifuge.UnauthorizedError("login required");
    }
    if (!response.ok) {
      throw new Error(`token request failed: HTTP ${response.status}`);
    }
    return (await response.json()).token;
  }

  const centrifuge = new Centrifuge(config.wsUrl, { getToken });
  centrifuge.on("connecting", () => setStatus("connecting", "connecting…"));
  centrifuge.on("connected", () => setStatus("connected", "live"));
  centrifuge.on("disconnected", (ctx) => setStatus("disconnected", `offline (${ctx.reason})`));
  centrifuge.on("error", (ctx) => console.warn("centrifuge error", ctx.error));

  const sub = centrifuge.newSubscription(config.channel, {
    recoverable: true, // resubscribe from the last offset seen, get what was missed
    joinLeave: true,
  });

  async function refreshPresence() {
    try {
      const stats = await sub.presenceStats();
      presenceEl.textContent = `${stats.numUsers} online`;
    } catch (err) {
      presenceEl.textContent = "– online";
    }
  }

  async function loadHistory() {
    const result = await sub.history({ limit: HISTORY_LIMIT, reverse: true });
    for (const pub of result.publications.reverse()) {
      addMessage(pub);
    }
  }

  sub.on("subscribed", async (ctx) => {
    const position = ctx.streamPosition;
    const newEpoch = position ? position.epoch : null;
    if (ctx.wasRecovering && ctx.recovered && newEpoch === epoch) {
      // Missed publications follow as "publication" events.
    } else {
      // First entry, or the gap could not be filled: start over from history.
      if (newEpoch !== epoch) {
        messages.replaceChildren();
      }
      epoch = newEpoch;
      try {
        await loadHistory();
      } catch (err) {
        showError(`Could not load the history: ${err.message || err}`);
      }
    }
    refreshPresence();
  });
  sub.on("publication", (ctx) => addMessage(ctx));
  sub.on("join", refreshPresence);
  sub.on("leave", refreshPresence);
  sub.on("error", (ctx) => console.warn("subscription error", ctx.error));

  sub.subscribe();
  centrifuge.connect();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) {
      return;
    }
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const response = await fetch(config.sendUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "X-CSRFToken": csrfToken,
        },
        body: JSON.stringify({ text }),
      });
      if (response.status === 401) {
        window.location.assign(config.loginUrl);
        return;
      }
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        throw new Error(body.error || `HTTP ${response.status}`);
      }
      input.value = "";
      showError("");
      // No local echo: the message appears when tidings delivers it, like everyone else's.
    } catch (err) {
      showError(`Not sent: ${err.message || err}`);
    } finally {
      button.disabled = false;
      input.focus();
    }
  });
})();
