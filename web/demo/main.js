// The tidings demo chat: the unmodified centrifuge-js SDK against `tidings serve --dev`.
//
// Channels: `room-<name>` for the rooms (--dev opens every channel without a namespace,
// with history, presence, join/leave and recovery) and `people`, where each connection
// says which name it goes by: anonymous --dev connections all have user "", so names
// travel with the publications (`info.client` tells who sent them).
import { Centrifuge } from "centrifuge";
import "./style.css";

const DEFAULT_ROOMS = ["general", "random", "help"];
const ROOM_PREFIX = "room-";
const PEOPLE = "people";
const HISTORY_LIMIT = 50;

const params = new URLSearchParams(location.search);
const wsURL =
  params.get("ws") ||
  `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/connection/websocket`;
// Where WebSocket is blocked (a proxy, a carrier), the SDK falls back to HTTP-streaming,
// then to SSE, with its commands posted to /emulation (all served with --dev).
const httpBase = params.get("http") || location.origin;
const TRANSPORTS = [
  { transport: "websocket", endpoint: wsURL },
  { transport: "http_stream", endpoint: `${httpBase}/connection/http_stream` },
  { transport: "sse", endpoint: `${httpBase}/connection/sse` },
];

const $ = (selector) => document.querySelector(selector);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};

const state = {
  name: cleanName(params.get("name") || localStorage.getItem("tidings.demo.name") || ""),
  room: roomFromHash() || "general",
  rooms: loadRooms(),
  clientId: "",
  connectedOnce: false,
  reconnects: 0,
  names: new Map(), // client id -> name
  presence: new Map(), // client id -> ClientInfo, for the current room
  sub: null, // the current room's subscription
  epoch: "", // of the current room's stream
  seen: new Set(), // "epoch:offset" of the messages shown
  recovered: null, // publications recovered so far, while a recovery is delivered
};

// Anonymous by default (--dev allows it); `?token=<JWT>` connects as a user instead, with a
// token from `tidings token --user 42` or your backend.
const centrifuge = new Centrifuge(TRANSPORTS, {
  emulationEndpoint: `${httpBase}/emulation`,
  token: params.get("token") || "",
  name: "tidings-demo",
  minReconnectDelay: 200,
  maxReconnectDelay: 3000,
});
window.tidingsDemo = { centrifuge, state };

// --- connection badge --------------------------------------------------------------

const badge = $("#conn-badge");

function setBadge(connState, detail = "") {
  badge.dataset.state = connState;
  badge.dataset.reconnects = String(state.reconnects);
  const labels = {
    connecting: state.connectedOnce ? "reconnecting…" : "connecting…",
    connected: "connected",
    disconnected: "disconnected",
  };
  badge.querySelector(".label").textContent = labels[connState];
  badge.querySelector(".reconnects b").textContent = String(state.reconnects);
  badge.title = detail ? `${labels[connState]}: ${detail}` : labels[connState];
  badge.querySelector(".reconnect").hidden = connState !== "disconnected";
}

function setTransport(transport) {
  badge.dataset.transport = transport;
  badge.querySelector(".transport").textContent = transport.replace("_", "-");
}

centrifuge.on("connecting", (ctx) => setBadge("connecting", ctx.reason));
centrifuge.on("connected", (ctx) => {
  state.clientId = ctx.client;
  if (state.connectedOnce) state.reconnects += 1;
  state.connectedOnce = true;
  setTransport(ctx.transport);
  setBadge("connected", `client ${ctx.client} over ${ctx.transport}`);
  renderMe();
});
centrifuge.on("disconnected", (ctx) => {
  setBadge("disconnected", `${ctx.reason} (${ctx.code})`);
  setRoomStatus("offline", "left");
  systemLine(`Disconnected: ${ctx.reason} (${ctx.code}).`, "warn");
});
badge.querySelector(".reconnect").addEventListener("click", () => centrifuge.connect());

// --- names ----------------------------------------------------------------------------

function cleanName(name) {
  return String(name ?? "").trim().slice(0, 32);
}

function displayName(client, fallbackUser = "") {
  if (client && client === state.clientId) return state.name;
  return state.names.get(client) || fallbackUser || `guest-${(client || "????").slice(0, 4)}`;
}

/** The user ID shown after a name: only for connections made with a token. */
function userOf(info) {
  return info && info.user ? info.user : "";
}

/** Note the name a publication gives its sender; true when the client was not known. */
function learnName(ctx) {
  const client = ctx.info?.client;
  const user = ctx.data && typeof ctx.data.user === "string" ? cleanName(ctx.data.user) : "";
  if (!client || !user) return false;
  const fresh = !state.names.has(client);
  if (state.names.get(client) !== user) {
    state.names.set(client, user);
    refreshNames();
  }
  return fresh;
}

/** Re-label everything that shows a client's name (names can arrive after the client). */
function refreshNames() {
  for (const node of document.querySelectorAll("[data-name-of]")) {
    const name = displayName(node.dataset.nameOf, node.dataset.fallback);
    if (node.textContent !== name) node.textContent = name;
  }
  for (const node of document.querySelectorAll("[data-avatar-of]")) {
    paintAvatar(node, displayName(node.dataset.avatarOf, node.dataset.fallback));
  }
}

function nameSpan(client, fallback = "", className = "name") {
  const span = el("span", { className, textContent: displayName(client, fallback) });
  span.dataset.nameOf = client || "";
  span.dataset.fallback = fallback;
  return span;
}

function hue(text) {
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function paintAvatar(node, name) {
  node.textContent = (name || "?").slice(0, 1).toUpperCase();
  node.style.background = `hsl(${hue(name || "?")} 55% 48%)`;
}

function avatar(client, fallback = "") {
  const node = el("span", { className: "avatar" });
  node.dataset.avatarOf = client || "";
  node.dataset.fallback = fallback;
  paintAvatar(node, displayName(client, fallback));
  return node;
}

let peopleSub = null;
let peopleHistoryLoaded = false;

function announce(reply) {
  if (!peopleSub || !state.name) return;
  peopleSub.publish({ type: "hello", user: state.name, reply }).catch(() => {});
}

function startPeople() {
  peopleSub = centrifuge.newSubscription(PEOPLE);
  peopleSub.on("subscribed", async () => {
    announce(false); // a new client id after each reconnect: say who it is
    if (peopleHistoryLoaded) return;
    peopleHistoryLoaded = true;
    try {
      const history = await peopleSub.history({ limit: 100, reverse: true });
      for (const pub of history.publications.reverse()) learnName(pub);
    } catch {
      peopleHistoryLoaded = false;
    }
  });
  peopleSub.on("publication", (ctx) => {
    const fresh = learnName(ctx);
    // Someone new said hello: tell them who we are (once, and never in answer to an answer).
    if (fresh && !ctx.data.reply && ctx.info.client !== state.clientId) announce(true);
  });
  peopleSub.subscribe();
}

// --- rooms ----------------------------------------------------------------------------

function cleanRoom(name) {
  return String(name ?? "")
    .trim()
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 32);
}

function roomFromHash() {
  return cleanRoom(decodeURIComponent(location.hash.slice(1)));
}

function loadRooms() {
  let saved = [];
  try {
    saved = JSON.parse(localStorage.getItem("tidings.demo.rooms") || "[]");
  } catch {
    saved = [];
  }
  const rooms = new Set(DEFAULT_ROOMS);
  for (const room of Array.isArray(saved) ? saved : []) if (cleanRoom(room)) rooms.add(cleanRoom(room));
  return rooms;
}

function renderRooms() {
  const list = $("#room-list");
  list.replaceChildren(
    ...[...state.rooms].map((room) => {
      const button = el("button", { type: "button", textContent: `# ${room}` });
      button.dataset.room = room;
      if (room === state.room) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => enterRoom(room));
      return el("li", {}, button);
    }),
  );
}

$("#new-room").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("#new-room-name");
  const room = cleanRoom(input.value);
  input.value = "";
  if (!room) return;
  state.rooms.add(room);
  const custom = [...state.rooms].filter((r) => !DEFAULT_ROOMS.includes(r));
  localStorage.setItem("tidings.demo.rooms", JSON.stringify(custom));
  enterRoom(room);
});

window.addEventListener("hashchange", () => {
  const room = roomFromHash();
  if (room && room !== state.room && state.name) enterRoom(room);
});

function setRoomStatus(text, status) {
  const node = $("#room-status");
  node.textContent = text;
  node.dataset.state = status;
}

function enterRoom(room) {
  if (state.sub) {
    state.sub.removeAllListeners();
    state.sub.unsubscribe();
    centrifuge.removeSubscription(state.sub);
  }
  state.room = room;
  state.rooms.add(room);
  if (roomFromHash() !== room) history.replaceState(null, "", `#${room}`);
  state.presence.clear();
  state.seen.clear();
  state.epoch = "";
  $("#messages").replaceChildren();
  $("#room-title").textContent = `# ${room}`;
  document.title = `#${room} · tidings demo`;
  renderRooms();
  renderPresence();
  setRoomStatus("joining…", "joining");

  const sub = centrifuge.newSubscription(ROOM_PREFIX + room, {
    recoverable: true,
    positioned: true,
    joinLeave: true,
  });
  state.sub = sub;
  sub.on("subscribing", () => {
    if (centrifuge.state !== "disconnected") setRoomStatus(state.epoch ? "rejoining…" : "joining…", "joining");
  });
  sub.on("subscribed", (ctx) => onSubscribed(sub, ctx));
  sub.on("unsubscribed", (ctx) => setRoomStatus(`left (${ctx.reason})`, "left"));
  sub.on("error", (ctx) => setRoomStatus(`error: ${ctx.error.message}`, "error"));
  sub.on("publication", (ctx) => {
    if (state.recovered !== null) state.recovered += 1;
    learnName(ctx);
    addMessage(ctx, state.epoch);
  });
  sub.on("join", (ctx) => {
    const fresh = !state.presence.has(ctx.info.client);
    state.presence.set(ctx.info.client, ctx.info);
    renderPresence();
    if (fresh && ctx.info.client !== state.clientId) presenceLine(ctx.info, "joined");
  });
  sub.on("leave", (ctx) => {
    if (!state.presence.delete(ctx.info.client)) return;
    renderPresence();
    presenceLine(ctx.info, "left");
  });
  sub.subscribe();
  $("#text").focus();
}

async function onSubscribed(sub, ctx) {
  const position = ctx.streamPosition || { offset: 0, epoch: "" };
  if (sub !== state.sub) return;
  if (ctx.wasRecovering && ctx.recovered) {
    // The missed publications are delivered right after this event (in the same task),
    // as publication events: count them, then say how many there were.
    const line = systemLine("Reconnected.", "ok");
    state.recovered = 0;
    setTimeout(() => {
      const missed = state.recovered;
      state.recovered = null;
      line.textContent = missed
        ? `Reconnected: recovered ${missed} missed message${missed === 1 ? "" : "s"}.`
        : "Reconnected: nothing was missed.";
    }, 0);
    setRoomStatus("live", "live");
  } else {
    if (ctx.wasRecovering) {
      systemLine(
        position.epoch !== state.epoch
          ? "The server restarted and its history was reset: here is what it has now."
          : "Too much was missed to recover it: history reloaded.",
        "warn",
      );
    }
    state.epoch = position.epoch;
    setRoomStatus("loading history…", "joining");
    try {
      const history = await sub.history({ limit: HISTORY_LIMIT, reverse: true });
      if (sub !== state.sub) return;
      for (const pub of history.publications.reverse()) {
        learnName(pub);
        addMessage(pub, history.epoch || state.epoch);
      }
    } catch (error) {
      systemLine(`Could not load the history: ${error.message}`, "warn");
    }
    if (sub !== state.sub) return;
    if (!$("#messages").querySelector(".msg")) systemLine("No messages yet: say hello!", "muted empty-note");
    setRoomStatus("live", "live");
  }
  await loadPresence(sub);
}

async function loadPresence(sub) {
  try {
    const result = await sub.presence();
    if (sub !== state.sub) return;
    state.presence = new Map(Object.entries(result.clients));
    renderPresence();
  } catch (error) {
    if (sub === state.sub) setRoomStatus(`presence: ${error.message}`, "error");
  }
}

function renderPresence() {
  const entries = [...state.presence.values()].sort((a, b) =>
    displayName(a.client, a.user).localeCompare(displayName(b.client, b.user)),
  );
  $("#presence-count").textContent = String(entries.length);
  $("#presence").replaceChildren(
    ...entries.map((info) => {
      const li = el("li", {}, avatar(info.client, info.user), nameSpan(info.client, info.user));
      li.dataset.client = info.client;
      if (userOf(info)) li.append(el("span", { className: "user", textContent: `@${userOf(info)}` }));
      if (info.client === state.clientId) li.append(el("span", { className: "you", textContent: "you" }));
      return li;
    }),
  );
}

// --- messages ---------------------------------------------------------------------------

function timeOf(ts) {
  if (typeof ts !== "number") return "";
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function addMessage(pub, epoch) {
  const offset = pub.offset || 0;
  const key = `${epoch}:${offset}`;
  if (offset) {
    if (state.seen.has(key)) return;
    state.seen.add(key);
  }
  const data = pub.data;
  const client = pub.info?.client || "";
  const fromServer = !pub.info;
  const author = data && typeof data.user === "string" && data.user ? cleanName(data.user) : "";
  const text =
    data && typeof data.text === "string" ? data.text : JSON.stringify(data === undefined ? null : data);

  const li = el("li", { className: "msg" });
  if (client && client === state.clientId) li.classList.add("mine");
  if (fromServer) li.classList.add("server");
  li.dataset.epoch = epoch;
  li.dataset.offset = String(offset);
  const who = author || (fromServer ? "server" : "");
  const head = el(
    "div",
    { className: "meta" },
    el("span", { className: "author", textContent: who || displayName(client) }),
    el("time", { textContent: timeOf(data?.ts) }),
  );
  if (fromServer) head.append(el("span", { className: "tag", textContent: "API" }));
  const avatarNode = el("span", { className: "avatar" });
  paintAvatar(avatarNode, who || displayName(client));
  li.append(avatarNode, el("div", { className: "body" }, head, el("p", { className: "text", textContent: text })));
  $("#messages").querySelector(".empty-note")?.remove();
  insertSorted(li, epoch, offset);
}

/** Keep a stream's messages in offset order (history can land after live ones). */
function insertSorted(li, epoch, offset) {
  const list = $("#messages");
  let after = list.lastElementChild;
  while (
    offset &&
    after &&
    after.classList.contains("msg") &&
    after.dataset.epoch === epoch &&
    Number(after.dataset.offset) > offset
  ) {
    after = after.previousElementSibling;
  }
  if (after) after.after(li);
  else list.prepend(li);
  scrollDown();
}

function systemLine(text, kind = "muted") {
  const li = el("li", { className: `system ${kind}`, textContent: text });
  $("#messages").append(li);
  scrollDown();
  return li;
}

function presenceLine(info, verb) {
  const li = el("li", { className: `system presence ${verb}` });
  li.append(nameSpan(info.client, info.user, "who"), ` ${verb} the room`);
  $("#messages").append(li);
  scrollDown();
}

function scrollDown() {
  const list = $("#messages");
  list.scrollTop = list.scrollHeight;
}

$("#composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("#text");
  const text = input.value.trim();
  if (!text || !state.sub) return;
  input.value = "";
  const error = $("#composer-error");
  error.hidden = true;
  try {
    await state.sub.publish({ user: state.name, text, ts: Date.now() });
  } catch (err) {
    input.value = text;
    error.textContent = `Not sent: ${err.message || err.code || err}. It will work again once reconnected.`;
    error.hidden = false;
  }
});

// --- name prompt and start ---------------------------------------------------------------

function renderMe() {
  const me = $("#me");
  me.hidden = !state.name;
  me.replaceChildren(el("span", { className: "avatar small" }), el("span", { textContent: state.name }));
  paintAvatar(me.firstChild, state.name);
  me.dataset.client = state.clientId;
  me.title = `You are ${state.name}${state.clientId ? ` (client ${state.clientId})` : ""}: click to change`;
  refreshNames();
  renderPresence();
}

function askName() {
  const overlay = $("#name-overlay");
  const input = $("#name-input");
  input.value = state.name;
  overlay.hidden = false;
  input.focus();
}

$("#me").addEventListener("click", askName);

$("#name-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = cleanName($("#name-input").value);
  if (!name) return;
  const first = !state.name;
  state.name = name;
  localStorage.setItem("tidings.demo.name", name);
  $("#name-overlay").hidden = true;
  renderMe();
  if (first) start();
  else announce(false);
});

let started = false;

function start() {
  if (started) return;
  started = true;
  renderMe();
  startPeople();
  enterRoom(state.room);
  centrifuge.connect();
}

renderRooms();
setBadge("connecting");
if (state.name) start();
else askName();
