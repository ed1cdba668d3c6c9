// The tidings admin UI: a password login (HttpOnly session cookie set by the hub), then a
// dashboard fed by polling /admin/api/stats every second, and the server API behind
// /admin/api/<method> (publish, presence, history, disconnect).
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import "./style.css";

const BASE = import.meta.env.BASE_URL; // "/admin/"
const POLL_MS = 1000;
const WINDOW = 120; // points kept in the charts (2 minutes)

const $ = (selector) => document.querySelector(selector);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};

class APIError extends Error {
  constructor(code, message) {
    super(`${message} (${code})`);
    this.code = code;
  }
}

class LoggedOut extends Error {}

/** POST /admin/api/<method>: the server API's answer, its result or an APIError. */
async function api(method, body = {}) {
  const response = await fetch(`${BASE}api/${method}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.status === 401) {
    showLogin();
    throw new LoggedOut("logged out");
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new APIError(response.status, answer.error || response.statusText);
  if (answer.error) throw new APIError(answer.error.code, answer.error.message);
  return answer.result ?? {};
}

// --- login -------------------------------------------------------------------------------

function showLogin(message = "") {
  stopPolling();
  $("#dashboard-view").hidden = true;
  $("#login-view").hidden = false;
  const error = $("#login-error");
  error.textContent = message;
  error.hidden = !message;
  $("#password").value = "";
  $("#password").focus();
}

function showDashboard() {
  $("#login-view").hidden = true;
  $("#dashboard-view").hidden = false;
  startPolling();
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("#login-button");
  const error = $("#login-error");
  button.disabled = true;
  error.hidden = true;
  try {
    const response = await fetch(`${BASE}login`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ password: $("#password").value }),
    });
    if (response.ok) {
      showDashboard();
      return;
    }
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After");
      error.textContent = `Too many failed attempts: try again in ${wait || "a few"} seconds.`;
    } else if (response.status === 401) {
      error.textContent = "Wrong password.";
    } else {
      error.textContent = `Login failed (HTTP ${response.status}).`;
    }
  } catch (err) {
    error.textContent = `The hub does not answer: ${err.message}`;
  } finally {
    button.disabled = false;
  }
  error.hidden = false;
  $("#password").select();
});

$("#logout").addEventListener("click", async () => {
  await fetch(`${BASE}logout`, { method: "POST", credentials: "same-origin" }).catch(() => {});
  showLogin();
});

// --- charts --------------------------------------------------------------------------------

const series = { t: [], sent: [], received: [], connections: [], subscriptions: [] };

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function makeChart(node, lines, yLabel) {
  const options = {
    width: node.clientWidth || 500,
    height: 190,
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] } },
    axes: [
      {
        stroke: "#6b7385",
        grid: { stroke: "#eef0f5" },
        ticks: { stroke: "#e3e6ee" },
        space: 70,
        incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600],
        values: (_u, splits) => splits.map((t) => clock(t)),
      },
      { stroke: "#6b7385", grid: { stroke: "#eef0f5" }, ticks: { stroke: "#e3e6ee" }, label: yLabel, size: 50 },
    ],
    series: [
      {},
      ...lines.map(([label, color]) => ({
        label,
        stroke: color,
        width: 2,
        fill: `${color}1f`,
        points: { show: false },
      })),
    ],
  };
  return new uPlot(options, [[], ...lines.map(() => [])], node);
}

let messagesChart = null;
let connectionsChart = null;

function ensureCharts() {
  if (messagesChart) return;
  messagesChart = makeChart(
    $("#chart-messages"),
    [
      ["sent /s", "#4f5bd5"],
      ["received /s", "#22b8cf"],
    ],
    "msg/s",
  );
  connectionsChart = makeChart(
    $("#chart-connections"),
    [
      ["connections", "#1f9d55"],
      ["subscriptions", "#c27c0e"],
    ],
    "count",
  );
  const resize = () => {
    for (const [chart, node] of [
      [messagesChart, $("#chart-messages")],
      [connectionsChart, $("#chart-connections")],
    ]) {
      chart.setSize({ width: node.clientWidth, height: 190 });
    }
  };
  new ResizeObserver(resize).observe($("#chart-messages").parentElement);
}

function drawCharts() {
  ensureCharts();
  messagesChart.setData([series.t, series.sent, series.received]);
  connectionsChart.setData([series.t, series.connections, series.subscriptions]);
  $("#chart-messages").dataset.points = String(series.t.length);
  $("#chart-connections").dataset.points = String(series.t.length);
}

// --- polling ---------------------------------------------------------------------------------

let timer = null;
let previous = null; // the last stats, for the rates
let polling = false;

function startPolling() {
  if (timer) return;
  previous = null;
  poll();
  timer = setInterval(poll, POLL_MS);
}

function stopPolling() {
  clearInterval(timer);
  timer = null;
}

function setLive(text, liveState) {
  const live = $("#live");
  live.textContent = text;
  live.dataset.state = liveState;
}

async function poll() {
  if (polling) return;
  polling = true;
  try {
    const response = await fetch(`${BASE}api/stats`, { credentials: "same-origin" });
    if (response.status === 401) {
      showLogin("Your session ended: sign in again.");
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    update(await response.json());
    setLive(`live · ${new Date().toLocaleTimeString()}`, "live");
  } catch (err) {
    setLive(`hub unreachable (${err.message})`, "down");
  } finally {
    polling = false;
  }
}

const fmt = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });

function update(stats) {
  let sentRate = 0;
  let receivedRate = 0;
  if (previous && stats.time > previous.time) {
    const dt = stats.time - previous.time;
    // A restarted hub starts its counters again: no negative rates.
    sentRate = Math.max(0, (stats.messages_sent - previous.messages_sent) / dt);
    receivedRate = Math.max(0, (stats.messages_received - previous.messages_received) / dt);
  }
  const first = previous === null;
  previous = stats;
  if (!first) {
    series.t.push(stats.time);
    series.sent.push(sentRate);
    series.received.push(receivedRate);
    series.connections.push(stats.connections);
    series.subscriptions.push(stats.subscriptions);
    for (const values of Object.values(series)) if (values.length > WINDOW) values.shift();
    drawCharts();
  } else {
    ensureCharts();
  }

  $("#stat-connections").textContent = fmt.format(stats.connections);
  $("#stat-subscriptions").textContent = fmt.format(stats.subscriptions);
  $("#stat-channels").textContent = fmt.format(Object.keys(stats.channels).length);
  $("#stat-sent-rate").textContent = first ? "–" : fmt.format(sentRate);
  $("#stat-received-rate").textContent = first ? "–" : fmt.format(receivedRate);
  $("#stat-sent").textContent = fmt.format(stats.messages_sent);
  renderNodes(stats.nodes);
  renderChannels(stats.channels);
}

function uptime(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function renderNodes(nodes) {
  $("#nodes tbody").replaceChildren(
    ...nodes.map((node) =>
      el(
        "tr",
        { title: node.uid },
        el("td", { textContent: node.name }),
        el("td", { textContent: node.version }),
        el("td", { className: "num", textContent: String(node.num_clients) }),
        el("td", { className: "num", textContent: String(node.num_users) }),
        el("td", { className: "num", textContent: String(node.num_channels) }),
        el("td", { className: "num", textContent: String(node.num_subs) }),
        el("td", { className: "num", textContent: uptime(node.uptime) }),
      ),
    ),
  );
}

let selected = "";

function renderChannels(channels) {
  const names = Object.keys(channels).sort();
  $("#no-channels").hidden = names.length > 0;
  $("#channels tbody").replaceChildren(
    ...names.map((name) => {
      const row = el(
        "tr",
        { className: "clickable" },
        el("td", {}, el("code", { textContent: name })),
        el("td", { className: "num", textContent: String(channels[name]) }),
      );
      row.dataset.channel = name;
      if (name === selected) row.classList.add("selected");
      row.addEventListener("click", () => openChannel(name));
      return row;
    }),
  );
  $("#channel-names").replaceChildren(...names.map((name) => el("option", { value: name })));
}

// --- channel detail: presence and history -------------------------------------------------

function json(value) {
  return value === undefined ? "" : JSON.stringify(value);
}

async function openChannel(name) {
  selected = name;
  for (const row of document.querySelectorAll("#channels tr")) {
    row.classList.toggle("selected", row.dataset.channel === name);
  }
  $("#channel-detail").hidden = false;
  $("#detail-channel").textContent = name;
  if (!$("#publish-channel").value) $("#publish-channel").value = name;
  await Promise.all([loadPresence(name), loadHistory(name)]);
}

async function loadPresence(channel) {
  const error = $("#detail-presence-error");
  const body = $("#detail-presence tbody");
  error.hidden = true;
  try {
    const result = await api("presence", { channel });
    if (channel !== selected) return;
    const clients = Object.values(result.presence || {});
    body.replaceChildren(
      ...clients.map((info) => {
        // The server API disconnects by user ID: anonymous connections have none.
        const kick = info.user
          ? el("button", { type: "button", className: "small danger", textContent: "Disconnect" })
          : el("span", { className: "hint", textContent: "anonymous" });
        if (info.user) kick.addEventListener("click", () => disconnect(info.user, info.client));
        const row = el(
          "tr",
          {},
          el("td", {}, el("code", { textContent: info.client })),
          el("td", { textContent: info.user || "(anonymous)" }),
          el("td", { className: "json", textContent: json(info.conn_info) }),
          el("td", {}, kick),
        );
        row.dataset.client = info.client;
        return row;
      }),
    );
    if (!clients.length) body.replaceChildren(el("tr", {}, el("td", { colSpan: 4, className: "hint", textContent: "nobody" })));
  } catch (err) {
    if (err instanceof LoggedOut) return;
    body.replaceChildren();
    error.textContent = err.message;
    error.hidden = false;
  }
}

async function loadHistory(channel) {
  const error = $("#detail-history-error");
  const list = $("#detail-history");
  error.hidden = true;
  try {
    const result = await api("history", { channel, limit: 20, reverse: true });
    if (channel !== selected) return;
    $("#detail-position").textContent = `top offset ${result.offset}, epoch ${result.epoch}`;
    const publications = result.publications || [];
    list.replaceChildren(
      ...publications.map((pub) => {
        const li = el(
          "li",
          {},
          el("span", { className: "offset", textContent: `#${pub.offset}` }),
          el("code", { className: "json", textContent: json(pub.data) }),
        );
        li.dataset.offset = String(pub.offset);
        return li;
      }),
    );
    if (!publications.length) list.replaceChildren(el("li", { className: "hint", textContent: "no publications kept" }));
  } catch (err) {
    if (err instanceof LoggedOut) return;
    list.replaceChildren();
    error.textContent = err.message;
    error.hidden = false;
  }
}

$("#detail-refresh").addEventListener("click", () => selected && openChannel(selected));
$("#detail-close").addEventListener("click", () => {
  selected = "";
  $("#channel-detail").hidden = true;
  for (const row of document.querySelectorAll("#channels tr.selected")) row.classList.remove("selected");
});

// --- publish and disconnect ----------------------------------------------------------------

function showResult(node, text, ok) {
  node.textContent = text;
  node.dataset.ok = String(ok);
  node.hidden = false;
}

$("#publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("#publish-result");
  const channel = $("#publish-channel").value.trim();
  let data;
  try {
    data = JSON.parse($("#publish-data").value);
  } catch (err) {
    showResult(result, `Data is not JSON: ${err.message}`, false);
    return;
  }
  try {
    const answer = await api("publish", { channel, data });
    const where = answer.offset ? ` at offset ${answer.offset}` : "";
    showResult(result, `Published to ${channel}${where}.`, true);
    if (channel === selected) loadHistory(channel);
  } catch (err) {
    if (!(err instanceof LoggedOut)) showResult(result, `Not published: ${err.message}`, false);
  }
});

async function disconnect(user, client) {
  const result = $("#disconnect-result");
  try {
    await api("disconnect", client ? { user, client } : { user });
    const who = client ? `client ${client} of user ${user}` : `user ${user}`;
    showResult(result, `Disconnected ${who} (if connected).`, true);
    if (selected) setTimeout(() => loadPresence(selected), 300);
  } catch (err) {
    if (!(err instanceof LoggedOut)) showResult(result, `Not disconnected: ${err.message}`, false);
  }
}

$("#disconnect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("#disconnect-user").value.trim();
  const client = $("#disconnect-client").value.trim();
  if (!user) {
    showResult($("#disconnect-result"), "Give a user ID: the server API disconnects users.", false);
    return;
  }
  disconnect(user, client);
});

// --- start --------------------------------------------------------------------------------

(async () => {
  try {
    const response = await fetch(`${BASE}session`, { credentials: "same-origin" });
    if (response.ok) showDashboard();
    else showLogin();
  } catch {
    showLogin("The hub does not answer.");
  }
})();
