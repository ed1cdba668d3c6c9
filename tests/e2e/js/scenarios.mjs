// Scenarios run by the real centrifuge-js SDK in Node against a tidings hub.
//
// Driven by tests/e2e/test_sdk_js.py: it starts the hub, then runs
//
//     node scenarios.mjs < input.json
//
// where the input is one JSON object: {"scenario": NAME, "url": WS_URL, ...the scenario's
// parameters}. The script prints one JSON object per line on stdout: what the SDK reported
// (connected contexts, publications, presence, history, errors...), exactly as the SDK gave it
// (payloads decoded from JSON when the Protobuf SDK hands them over as bytes, with `encoding`
// saying which). The last line is {"type": "done"} on success, or {"type": "failed", "error"}
// when the scenario could not go on (a wait timed out, a call was refused unexpectedly); the
// exit code is then 1. The Python side asserts on the values: this script only drives the SDK
// and waits, it checks nothing beyond what it needs to go on.
//
// Every wait is bounded by WAIT_MS, and the whole scenario by the input's `deadlineMs`.

import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';

const WAIT_MS = 5000;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

const started = performance.now();

function out(record) {
  const ms = Math.round(performance.now() - started);
  process.stdout.write(JSON.stringify({ ...record, ms }) + '\n');
}

function finish(code) {
  // Exit once stdout is flushed (a pipe to Python is asynchronous in Node).
  process.stdout.write('', () => process.exit(code));
}

function describe(error) {
  if (error instanceof Error) {
    return `${error.name}: ${error.message}`;
  }
  return JSON.stringify(error);
}

// ---------------------------------------------------------------------------------------------
// Payloads: JSON values as the SDK of each protocol wants them
// ---------------------------------------------------------------------------------------------

function encode(protocol, value) {
  return protocol === 'protobuf' ? encoder.encode(JSON.stringify(value)) : value;
}

/** A payload the SDK gave back: {encoding, value} (bytes are parsed as JSON). */
function decode(data) {
  if (data instanceof Uint8Array) {
    const text = decoder.decode(data);
    try {
      return { encoding: 'bytes', value: text === '' ? null : JSON.parse(text) };
    } catch {
      return { encoding: 'bytes', value: null, text };
    }
  }
  return { encoding: 'json', value: data === undefined ? null : data };
}

function present(data) {
  return data !== undefined && !(data instanceof Uint8Array && data.length === 0);
}

function clientInfo(info) {
  if (!info) {
    return null;
  }
  const result = { client: info.client, user: info.user };
  // The Protobuf SDK gives an absent bytes field as empty bytes (protobufjs' default): absent.
  if (present(info.connInfo)) {
    result.connInfo = decode(info.connInfo).value;
  }
  if (present(info.chanInfo)) {
    result.chanInfo = decode(info.chanInfo).value;
  }
  return result;
}

function publication(ctx) {
  const { encoding, value } = decode(ctx.data);
  return {
    channel: ctx.channel,
    encoding,
    data: value,
    offset: ctx.offset ?? null,
    info: clientInfo(ctx.info),
    tags: ctx.tags ?? null,
  };
}

function subscribed(ctx) {
  return {
    channel: ctx.channel,
    recoverable: ctx.recoverable,
    positioned: ctx.positioned,
    wasRecovering: ctx.wasRecovering,
    recovered: ctx.recovered,
    hasRecoveredPublications: ctx.hasRecoveredPublications,
    streamPosition: ctx.streamPosition ?? null,
  };
}

function presence(result) {
  return Object.entries(result.clients)
    .map(([key, info]) => ({ key, ...clientInfo(info) }))
    .sort((a, b) => a.client.localeCompare(b.client));
}

function history(result) {
  return {
    offset: result.offset,
    epoch: result.epoch,
    publications: result.publications.map(publication),
  };
}

// ---------------------------------------------------------------------------------------------
// Waiting for SDK events
// ---------------------------------------------------------------------------------------------

function withTimeout(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Keeps every event of the given names an emitter fires, to be taken in order. */
class Recorder {
  constructor(emitter, names, label) {
    this.label = label;
    this.queues = new Map();
    this.waiters = new Map();
    for (const name of names) {
      this.queues.set(name, []);
      this.waiters.set(name, []);
      emitter.on(name, (ctx) => {
        const waiters = this.waiters.get(name);
        const index = waiters.findIndex((w) => w.predicate(ctx));
        if (index >= 0) {
          const [waiter] = waiters.splice(index, 1);
          waiter.resolve(ctx);
        } else {
          this.queues.get(name).push(ctx);
        }
      });
    }
  }

  /** The first (unseen) `name` event matching `predicate`; unmatched earlier ones are kept. */
  next(name, predicate = () => true, ms = WAIT_MS) {
    const queue = this.queues.get(name);
    const index = queue.findIndex(predicate);
    if (index >= 0) {
      return Promise.resolve(queue.splice(index, 1)[0]);
    }
    let waiter;
    const promise = new Promise((resolve) => {
      waiter = { predicate, resolve };
      this.waiters.get(name).push(waiter);
    });
    const what = `${this.label}: '${name}' event`;
    return withTimeout(promise, what, ms).catch((error) => {
      const waiters = this.waiters.get(name);
      waiters.splice(waiters.indexOf(waiter), 1);
      throw error;
    });
  }

  async take(name, count, ms = WAIT_MS) {
    const events = [];
    for (let i = 0; i < count; i++) {
      events.push(await this.next(name, () => true, ms));
    }
    return events;
  }

  /** Events of `name` not taken yet (and forget them). */
  drain(name) {
    return this.queues.get(name).splice(0);
  }
}

const CLIENT_EVENTS = ['connecting', 'connected', 'disconnected', 'error', 'message'];
const SUB_EVENTS = [
  'subscribing',
  'subscribed',
  'unsubscribed',
  'publication',
  'join',
  'leave',
  'error',
];

const clients = [];

/** A client of `protocol` ('json' or 'protobuf') with a Recorder as `client.events`. */
function newClient(input, protocol, label, options = {}) {
  const Centrifuge = protocol === 'protobuf' ? ProtobufCentrifuge : JsonCentrifuge;
  const client = new Centrifuge(input.url, {
    websocket: WebSocket, // Node 20 has no global WebSocket
    name: 'tidings-e2e-js',
    timeout: 3000,
    minReconnectDelay: 50,
    maxReconnectDelay: 500,
    ...options,
  });
  client.protocol = protocol;
  client.label = label;
  client.events = new Recorder(client, CLIENT_EVENTS, label);
  clients.push(client);
  return client;
}

function newSub(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  sub.events = new Recorder(sub, SUB_EVENTS, `${client.label} sub ${channel}`);
  return sub;
}

async function connect(client) {
  client.connect();
  try {
    await client.ready(WAIT_MS); // rejects at once when the client ends disconnected
  } catch (error) {
    const gone = client.events.drain('disconnected');
    throw new Error(`${client.label} did not connect: ${describe(error)} ${JSON.stringify(gone)}`);
  }
  const ctx = await client.events.next('connected');
  client.clientId = ctx.client;
  out({ type: 'connected', who: client.label, protocol: client.protocol, client: ctx.client,
    transport: ctx.transport });
  return ctx;
}

async function subscribe(client, sub) {
  sub.subscribe();
  try {
    await sub.ready(WAIT_MS); // rejects at once when the subscription ends unsubscribed
  } catch (error) {
    const gone = sub.events.drain('unsubscribed');
    throw new Error(`${client.label} not subscribed: ${describe(error)} ${JSON.stringify(gone)}`);
  }
  const ctx = await sub.events.next('subscribed');
  out({ type: 'subscribed', who: client.label, ...subscribed(ctx) });
  return ctx;
}

/** The rejection of an SDK call ({code, message}), or a failure when it succeeds. */
async function refusal(promise, what) {
  try {
    const result = await withTimeout(promise, what);
    throw new Error(`${what} succeeded: ${JSON.stringify(result)}`);
  } catch (error) {
    if (error instanceof Error) {
      throw error;
    }
    return { code: error.code, message: error.message, temporary: error.temporary ?? false };
  }
}

async function call(promise, what) {
  try {
    return await withTimeout(promise, what);
  } catch (error) {
    throw new Error(`${what} failed: ${describe(error)}`);
  }
}

async function apiPublish(input, body) {
  return apiCall(input, 'publish', body);
}

async function apiCall(input, method, body) {
  const response = await withTimeout(
    fetch(`${input.api.url}/api/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': input.api.key },
      body: JSON.stringify(body),
    }),
    `server API ${method}`,
  );
  const reply = await response.json();
  if (response.status !== 200 || reply.error) {
    throw new Error(`server API ${method}: HTTP ${response.status} ${JSON.stringify(reply)}`);
  }
  return reply.result;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function other(protocol) {
  return protocol === 'json' ? 'protobuf' : 'json';
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/** A JSON client and a Protobuf client in one channel publish to each other. */
async function crossProtocol(input) {
  const { channel } = input;
  const json = newClient(input, 'json', 'json', { token: input.tokens.json });
  const protobuf = newClient(input, 'protobuf', 'protobuf', { token: input.tokens.protobuf });
  await connect(json);
  await connect(protobuf);
  const subs = { json: newSub(json, channel), protobuf: newSub(protobuf, channel) };
  await subscribe(json, subs.json);
  await subscribe(protobuf, subs.protobuf);

  // One after the other, each waited for by both, so the order is known.
  for (const [who, value] of input.publications) {
    await call(subs[who].publish(encode(who, value)), `${who} publish`);
    for (const receiver of ['json', 'protobuf']) {
      const ctx = await subs[receiver].events.next('publication');
      out({ type: 'publication', receiver, ...publication(ctx) });
    }
  }
  for (const who of ['json', 'protobuf']) {
    const result = await call(subs[who].history({ limit: 10 }), `${who} history`);
    out({ type: 'history', who, ...history(result) });
    const here = await call(subs[who].presence(), `${who} presence`);
    out({ type: 'presence', who, clients: presence(here) });
  }
  for (const who of ['json', 'protobuf']) {
    out({ type: 'extra_publications', who, count: subs[who].events.drain('publication').length });
  }
}

/** Presence, presence stats, join/leave and history, all clients of one protocol. */
async function presenceHistory(input) {
  const { protocol, channel } = input;
  const names = Object.keys(input.tokens);
  const all = {};
  const subs = {};
  for (const name of names) {
    all[name] = newClient(input, protocol, name, { token: input.tokens[name] });
    await connect(all[name]);
  }
  for (const name of names) {
    subs[name] = newSub(all[name], channel, { joinLeave: true });
    await subscribe(all[name], subs[name]);
  }
  const [first, ...others] = names;
  const watcher = subs[first];
  for (const name of others) {
    const id = all[name].clientId;
    const ctx = await watcher.events.next('join', (j) => j.info.client === id);
    out({ type: 'join', who: first, channel: ctx.channel, info: clientInfo(ctx.info) });
  }

  const here = await call(watcher.presence(), 'presence');
  out({ type: 'presence', who: first, clients: presence(here) });
  const last = names[names.length - 1];
  const stats = await call(subs[last].presenceStats(), 'presence stats');
  out({ type: 'presence_stats', who: last, numClients: stats.numClients,
    numUsers: stats.numUsers });

  for (const value of input.publications) {
    await call(watcher.publish(encode(protocol, value)), 'publish');
    const ctx = await watcher.events.next('publication');
    out({ type: 'publication', receiver: first, ...publication(ctx) });
  }
  const reader = subs[last];
  const full = await call(reader.history({ limit: 100 }), 'history(limit=100)');
  out({ type: 'history', query: 'all', ...history(full) });
  const top = await call(reader.history({ limit: 0 }), 'history(limit=0)');
  out({ type: 'history', query: 'position', ...history(top) });
  const since = full.publications[0];
  const after = await call(
    reader.history({ limit: 10, since: { offset: since.offset, epoch: full.epoch } }),
    'history(since)',
  );
  out({ type: 'history', query: 'since_first', ...history(after) });
  const newest = await call(reader.history({ limit: 2, reverse: true }), 'history(reverse)');
  out({ type: 'history', query: 'reverse_2', ...history(newest) });

  // The last client leaves: the others see it go, and presence forgets it.
  const leaving = all[last].clientId;
  all[last].disconnect();
  const leave = await watcher.events.next('leave', (l) => l.info.client === leaving);
  out({ type: 'leave', who: first, channel: leave.channel, info: clientInfo(leave.info) });
  const deadline = Date.now() + WAIT_MS;
  let now = await call(watcher.presenceStats(), 'presence stats');
  while (now.numClients === stats.numClients && Date.now() < deadline) {
    await sleep(20);
    now = await call(watcher.presenceStats(), 'presence stats');
  }
  out({ type: 'presence_stats_after_leave', numClients: now.numClients, numUsers: now.numUsers });
  const rest = await call(watcher.presence(), 'presence');
  out({ type: 'presence_after_leave', clients: presence(rest) });
}

/** Disconnect, publications meanwhile (server API and another client), reconnect: recovered. */
async function recovery(input) {
  const { protocol, channel } = input;
  const reader = newClient(input, protocol, 'reader', { token: input.tokens.reader });
  const writer = newClient(input, other(protocol), 'writer', { token: input.tokens.writer });
  await connect(reader);
  await connect(writer);
  const sub = newSub(reader, channel);
  await subscribe(reader, sub);

  await call(writer.publish(channel, encode(writer.protocol, { live: 1 })), 'live publish');
  out({ type: 'publication', phase: 'live', ...publication(await sub.events.next('publication')) });

  reader.disconnect();
  const gone = await reader.events.next('disconnected');
  out({ type: 'disconnected', who: 'reader', code: gone.code, reason: gone.reason,
    clientState: reader.state, subState: sub.state });

  for (let i = 0; i < input.missed; i++) {
    if (i % 2 === 0) {
      const body = { channel, data: { missed: i }, tags: { via: 'api' } };
      const result = await apiPublish(input, body);
      out({ type: 'api_publish', result });
    } else {
      await call(writer.publish(channel, encode(writer.protocol, { missed: i })), 'writer publish');
    }
  }

  await connect(reader);
  const ctx = await sub.events.next('subscribed');
  out({ type: 'resubscribed', ...subscribed(ctx) });
  // Recovered publications come right after 'subscribed'; none when recovery failed.
  const expected = ctx.recovered ? input.missed : 0;
  for (const pub of await sub.events.take('publication', expected)) {
    out({ type: 'publication', phase: 'recovered', ...publication(pub) });
  }

  await call(writer.publish(channel, encode(writer.protocol, { after: true })), 'after publish');
  const after = await sub.events.next('publication');
  out({ type: 'publication', phase: 'after', ...publication(after) });
  await sleep(100);
  out({ type: 'extra_publications', count: sub.events.drain('publication').length });
}

/** Connection JWTs (one valid, one expired with getToken), and RPC answered by the backend. */
async function tokenRpc(input) {
  const { protocol } = input;
  const client = newClient(input, protocol, 'token', { token: input.token });
  await connect(client);
  for (const [method, value] of input.rpc) {
    const promise = client.rpc(method, encode(protocol, value));
    try {
      const result = await withTimeout(promise, `rpc ${method}`);
      out({ type: 'rpc', method, ok: true, ...decode(result.data) });
    } catch (error) {
      if (error instanceof Error) {
        throw error;
      }
      out({ type: 'rpc', method, ok: false, code: error.code, message: error.message });
    }
  }

  const calls = [];
  const refreshed = newClient(input, protocol, 'expired', {
    token: input.expiredToken,
    getToken: async (ctx) => {
      calls.push(ctx);
      return input.freshToken;
    },
  });
  await connect(refreshed);
  out({ type: 'get_token', calls: calls.length });
  const sub = newSub(refreshed, input.channel);
  await subscribe(refreshed, sub);
  await call(sub.publish(encode(protocol, { who: 'refreshed' })), 'publish');
  out({ type: 'publication', ...publication(await sub.events.next('publication')) });
}

/** What the SDK reports for refusals: subscribe, publish, presence, and a bad connect token. */
async function errors(input) {
  const { protocol } = input;
  const client = newClient(input, protocol, 'client', { token: input.token });
  await connect(client);
  for (const channel of input.refusedChannels) {
    const sub = newSub(client, channel);
    sub.subscribe();
    const ctx = await sub.events.next('unsubscribed');
    out({ type: 'refused_subscribe', channel, code: ctx.code, reason: ctx.reason,
      subState: sub.state, subscribed: sub.events.drain('subscribed').length,
      errors: sub.events.drain('error').map((e) => ({ type: e.type, code: e.error.code })) });
    client.removeSubscription(sub);
  }

  const sub = newSub(client, input.readOnlyChannel);
  await subscribe(client, sub);
  const publish = await refusal(sub.publish(encode(protocol, { no: 1 })), 'publish');
  out({ type: 'refused_call', call: 'publish', ...publish });
  const here = await refusal(sub.presence(), 'presence');
  out({ type: 'refused_call', call: 'presence', ...here });
  const past = await refusal(sub.history({ limit: 10 }), 'history');
  out({ type: 'refused_call', call: 'history', ...past });
  out({ type: 'client_state', state: client.state, subState: sub.state });

  const bad = newClient(input, protocol, 'bad-token', { token: input.badToken });
  bad.connect();
  const ctx = await bad.events.next('disconnected');
  out({ type: 'bad_token', code: ctx.code, reason: ctx.reason, state: bad.state,
    connected: bad.events.drain('connected').length });
}

/** The server API's `send` reaches the SDK's `message` event; a `send` to a hub without a
 * message hook closes the connection with 3508. */
async function messages(input) {
  const { protocol } = input;
  const client = newClient(input, protocol, 'client', { token: input.token });
  await connect(client);
  await apiCall(input, 'send', { user: input.user, data: { hello: 'from the server' } });
  out({ type: 'message', ...decode((await client.events.next('message')).data) });
  await client.send(encode(protocol, { typing: true }));
  const ctx = await client.events.next('disconnected');
  out({ type: 'after_send', code: ctx.code, reason: ctx.reason, state: client.state });
}

/** A stream subscription with getState: the SDK subscribes with flag bit 2; a stale
 * position gets error 112, on which the SDK asks getState again and recovers from there. */
async function streamState(input) {
  const { protocol } = input;
  const client = newClient(input, protocol, 'client', { token: input.token });
  await connect(client);
  await apiPublish(input, { channel: input.channel, data: { n: 1 } });
  const top = await apiCall(input, 'history', { channel: input.channel, limit: 0 });
  let calls = 0;
  const sub = newSub(client, input.channel, {
    getState: async () => {
      calls += 1;
      // First a position from another epoch (an outdated cache), then the real top.
      return calls === 1 ? { offset: 5, epoch: 'stale' } : { offset: top.offset, epoch: top.epoch };
    },
  });
  await subscribe(client, sub);
  out({ type: 'get_state', calls, top });
  await apiPublish(input, { channel: input.channel, data: { n: 2 } });
  out({ type: 'publication', ...publication(await sub.events.next('publication')) });
}

/** A subscription with a tags filter gets only the publications whose tags pass it. */
async function tagsFilter(input) {
  const { protocol } = input;
  const client = newClient(input, protocol, 'client', { token: input.token });
  await connect(client);
  const sub = newSub(client, input.channel, { tagsFilter: input.filter });
  await subscribe(client, sub);
  for (const [n, ticker] of input.tickers.entries()) {
    await apiPublish(input, { channel: input.channel, data: { n }, tags: { ticker } });
  }
  await apiPublish(input, { channel: input.channel, data: { last: true }, tags: { ticker: 'END' } });
  for (;;) {
    const pub = publication(await sub.events.next('publication'));
    out({ type: 'publication', ...pub });
    if (pub.data.last) {
      break;
    }
  }
}

/** Fossil delta compression: a `delta: 'fossil'` subscription gets the `docs` published
 * through the server API (through each of `publishApis` in turn, default the hub's own),
 * with `delta: true` when `apiDelta`. With `missed`, the client then disconnects, those are
 * published, and it reconnects and recovers them; then `after` is published live. Each
 * phase ends with the subscription's deltaStats(). */
async function delta(input) {
  const { protocol, channel } = input;
  const client = newClient(input, protocol, 'client', { token: input.token });
  await connect(client);
  const sub = newSub(client, channel, { delta: 'fossil' });
  await subscribe(client, sub);
  const apis = input.publishApis ?? [input.api];
  let count = 0;
  async function publish(doc) {
    const api = apis[count % apis.length];
    count += 1;
    const body = { channel, data: doc, ...(input.apiDelta ? { delta: true } : {}) };
    out({ type: 'api_publish', api: api.url, result: await apiPublish({ ...input, api }, body) });
  }
  async function phase(name, n) {
    for (const ctx of await sub.events.take('publication', n)) {
      out({ type: 'publication', phase: name, ...publication(ctx) });
    }
    out({ type: 'delta_stats', phase: name, ...sub.deltaStats() });
  }

  for (const doc of input.docs) {
    await publish(doc);
  }
  await phase('live', input.docs.length);
  if (input.missed) {
    client.disconnect();
    await client.events.next('disconnected');
    for (const doc of input.missed) {
      await publish(doc);
    }
    await connect(client);
    const ctx = await sub.events.next('subscribed');
    out({ type: 'resubscribed', ...subscribed(ctx) });
    // Recovered publications come right after 'subscribed'; none when recovery failed.
    await phase('recovered', ctx.recovered ? input.missed.length : 0);
    await publish(input.after);
    await phase('after', 1);
  }
  await sleep(100);
  out({ type: 'extra_publications', count: sub.events.drain('publication').length });
}

/** One channel, four subscribers: JSON and Protobuf, each with and without delta. */
async function deltaMixed(input) {
  const { channel } = input;
  const subs = {};
  for (const protocol of ['json', 'protobuf']) {
    for (const mode of ['delta', 'plain']) {
      const label = `${protocol}-${mode}`;
      const client = newClient(input, protocol, label, { token: input.token });
      await connect(client);
      subs[label] = newSub(client, channel, mode === 'delta' ? { delta: 'fossil' } : {});
      await subscribe(client, subs[label]);
    }
  }
  for (const doc of input.docs) {
    await apiPublish(input, { channel, data: doc, delta: true });
  }
  for (const [label, sub] of Object.entries(subs)) {
    for (const ctx of await sub.events.take('publication', input.docs.length)) {
      out({ type: 'publication', receiver: label, ...publication(ctx) });
    }
    out({ type: 'delta_stats', receiver: label, ...sub.deltaStats() });
  }
  await sleep(100);
  for (const [label, sub] of Object.entries(subs)) {
    out({ type: 'extra_publications', receiver: label,
      count: sub.events.drain('publication').length });
  }
}

const SCENARIOS = {
  messages,
  tags_filter: tagsFilter,
  delta,
  delta_mixed: deltaMixed,
  stream_state: streamState,
  cross_protocol: crossProtocol,
  presence_history: presenceHistory,
  recovery,
  token_rpc: tokenRpc,
  errors,
};

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function main() {
  const input = await readStdin();
  const scenario = SCENARIOS[input.scenario];
  if (!scenario) {
    throw new Error(`unknown scenario ${JSON.stringify(input.scenario)}`);
  }
  const deadline = input.deadlineMs ?? 15000;
  await withTimeout(scenario(input), `scenario ${input.scenario}`, deadline);
}

let failed = false;
try {
  await main();
} catch (error) {
  failed = true;
  const stack = error instanceof Error ? error.stack : null;
  out({ type: 'failed', error: describe(error), stack });
}
for (const client of clients) {
  client.disconnect();
}
if (!failed) {
  out({ type: 'done' });
}
finish(failed ? 1 : 0);
