// Scenarios of the real centrifuge-js SDK over tidings' WebSocket fallbacks: HTTP-streaming
// (JSON and Protobuf) and SSE (JSON), with later commands sent through POST /emulation.
//
// Driven by tests/e2e/test_sdk_js_transports.py: it starts the hub(s), then runs
//
//     node transports.mjs
//
// and writes one JSON line on stdin: {"scenario": NAME, "variant": VARIANT, "base":
// "http://HOST:PORT", "url": WS_URL, "api": {url, key}, ...the scenario's parameters}, where
// VARIANT is one of `http_stream-json`, `http_stream-protobuf`, `sse-json`. A scenario that
// needs the test to act (stop and restart a hub) prints {"type": "step", "name"} and waits for
// the next stdin line, the test's answer. As scenarios.mjs does, the script prints one JSON
// object per line on stdout, what the SDK reported, and ends with {"type": "done"}, or with
// {"type": "failed", "error"} and exit code 1. The assertions are made on the Python side.
//
// Node 20 has fetch, ReadableStream, TextDecoder and AbortController, all http_stream needs,
// but no EventSource: SSE takes it from the `eventsource` package when it is installed.

import readline from 'node:readline';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';

const WAIT_MS = 5000;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

let EventSourceImpl = globalThis.EventSource ?? null;
try {
  const module = await import('eventsource');
  EventSourceImpl = module.EventSource ?? module.default ?? EventSourceImpl;
} catch {
  // Not installed: only the SSE scenarios need it, and they fail saying so.
}

const VARIANTS = {
  'http_stream-json': { transport: 'http_stream', protocol: 'json' },
  'http_stream-protobuf': { transport: 'http_stream', protocol: 'protobuf' },
  'sse-json': { transport: 'sse', protocol: 'json' },
};

// ---------------------------------------------------------------------------------------------
// Output and input
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

const stdinLines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function readLine(what) {
  const { value, done } = await stdinLines.next();
  if (done) {
    throw new Error(`stdin closed while waiting for ${what}`);
  }
  return JSON.parse(value);
}

/** Ask the test to act (`name`), and wait for its answer. */
async function step(name, data = {}) {
  out({ type: 'step', name, ...data });
  return withTimeout(readLine(`the answer to step ${name}`), `step ${name}`, 3 * WAIT_MS);
}

// ---------------------------------------------------------------------------------------------
// Payloads: JSON values as the SDK of each protocol wants them (as in scenarios.mjs)
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
  if (present(info.connInfo)) {
    result.connInfo = decode(info.connInfo).value;
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
// Waiting for SDK events (as in scenarios.mjs)
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

const CLIENT_EVENTS = ['connecting', 'connected', 'disconnected', 'error'];
const SUB_EVENTS = ['subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave',
  'error'];

const clients = [];

/** The SDK's first argument for `transport`: a WebSocket URL, or the transport list. */
function endpoint(input, transport) {
  if (transport === 'websocket') {
    return input.url;
  }
  return [{ transport, endpoint: `${input.base}/connection/${transport}` }];
}

/**
 * A client with a Recorder as `client.events`. `kind` is a variant name (see VARIANTS) or
 * `websocket-json` / `websocket-protobuf`; `endpoints` replaces its endpoint (fallback lists).
 */
function newClient(input, kind, label, options = {}, endpoints = null) {
  const [transport, protocol] = kind.split('-');
  if (transport === 'sse' && EventSourceImpl === null) {
    throw new Error('no EventSource: install the eventsource package in tests/e2e/js');
  }
  const Centrifuge = protocol === 'protobuf' ? ProtobufCentrifuge : JsonCentrifuge;
  const client = new Centrifuge(endpoints ?? endpoint(input, transport), {
    websocket: WebSocket, // Node 20 has no global WebSocket
    ...(EventSourceImpl !== null ? { eventsource: EventSourceImpl } : {}),
    emulationEndpoint: `${input.base}/emulation`,
    name: 'tidings-e2e-js',
    timeout: 3000,
    minReconnectDelay: 50,
    maxReconnectDelay: 500,
    ...options,
  });
  client.kind = kind;
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

/** What a connected client reports: its context, and the session of an emulated transport
 * (the SDK keeps the connect reply's `session` and `node` to address its /emulation posts). */
function connection(client, ctx) {
  return {
    who: client.label,
    kind: client.kind,
    client: ctx.client,
    transport: ctx.transport,
    inUse: client._transport ? client._transport.name() : null,
    session: client._session || null,
    node: client._node || null,
  };
}

async function connect(client) {
  client.connect();
  try {
    await client.ready(WAIT_MS); // rejects at once when the client ends disconnected
  } catch (error) {
    const gone = client.events.drain('disconnected');
    const errors = client.events.drain('error');
    throw new Error(`${client.label} did not connect: ${describe(error)} ` +
      `${JSON.stringify(gone)} ${JSON.stringify(errors)}`);
  }
  const ctx = await client.events.next('connected');
  client.clientId = ctx.client;
  out({ type: 'connected', ...connection(client, ctx) });
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

async function call(promise, what) {
  try {
    return await withTimeout(promise, what);
  } catch (error) {
    throw new Error(`${what} failed: ${describe(error)}`);
  }
}

async function apiPublish(input, body) {
  const response = await withTimeout(
    fetch(`${input.api.url}/api/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': input.api.key },
      body: JSON.stringify(body),
    }),
    'server API publish',
  );
  const reply = await response.json();
  if (response.status !== 200 || reply.error) {
    throw new Error(`server API publish: HTTP ${response.status} ${JSON.stringify(reply)}`);
  }
  return reply.result;
}

/** Take the subscription's next publication and print it for `phase`. */
async function nextPublication(sub, phase) {
  out({ type: 'publication', phase, ...publication(await sub.events.next('publication')) });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Publish `value` as `who` (a client's subscription), or through the server API (`api`). */
async function publishAs(input, subs, who, channel, value) {
  if (who === 'api') {
    out({ type: 'api_publish', result: await apiPublish(input, { channel, data: value }) });
    return;
  }
  const sub = subs[who];
  await call(sub.publish(encode(sub.owner.protocol, value)), `${who} publish`);
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/** Two clients of the variant in one channel: join, publications from each of them and from
 * the server API, presence, presence stats, history, and a leave. */
async function basics(input) {
  const { channel, variant } = input;
  const names = Object.keys(input.tokens);
  const all = {};
  const subs = {};
  for (const name of names) {
    all[name] = newClient(input, variant, name, { token: input.tokens[name] });
    await connect(all[name]);
  }
  for (const name of names) {
    subs[name] = newSub(all[name], channel, { joinLeave: true });
    subs[name].owner = all[name];
    await subscribe(all[name], subs[name]);
  }
  const [first, ...others] = names;
  for (const name of others) {
    const id = all[name].clientId;
    const ctx = await subs[first].events.next('join', (j) => j.info.client === id);
    out({ type: 'join', who: first, channel: ctx.channel, info: clientInfo(ctx.info) });
  }

  // One after the other, each waited for by every client, so the order is known.
  for (const [who, value] of input.publications) {
    await publishAs(input, subs, who, channel, value);
    for (const receiver of names) {
      const ctx = await subs[receiver].events.next('publication');
      out({ type: 'publication', receiver, ...publication(ctx) });
    }
  }

  for (const name of names) {
    const here = await call(subs[name].presence(), `${name} presence`);
    out({ type: 'presence', who: name, clients: presence(here) });
    const stats = await call(subs[name].presenceStats(), `${name} presence stats`);
    out({ type: 'presence_stats', who: name, numClients: stats.numClients,
      numUsers: stats.numUsers });
    const full = await call(subs[name].history({ limit: 100 }), `${name} history`);
    out({ type: 'history', who: name, query: 'all', ...history(full) });
  }
  const reader = subs[names[names.length - 1]];
  const top = await call(reader.history({ limit: 0 }), 'history(limit=0)');
  out({ type: 'history', query: 'position', ...history(top) });
  const since = await call(
    reader.history({ limit: 10, since: { offset: 1, epoch: top.epoch } }),
    'history(since)',
  );
  out({ type: 'history', query: 'since_first', ...history(since) });
  const newest = await call(reader.history({ limit: 2, reverse: true }), 'history(reverse)');
  out({ type: 'history', query: 'reverse_2', ...history(newest) });

  // The last client leaves: the first sees it go (its stream ended, the hub noticed).
  const last = names[names.length - 1];
  const leaving = all[last].clientId;
  all[last].disconnect();
  const leave = await subs[first].events.next('leave', (l) => l.info.client === leaving);
  out({ type: 'leave', who: first, channel: leave.channel, info: clientInfo(leave.info) });
  const deadline = Date.now() + WAIT_MS;
  let now = await call(subs[first].presenceStats(), 'presence stats');
  while (now.numClients === names.length && Date.now() < deadline) {
    await sleep(20);
    now = await call(subs[first].presenceStats(), 'presence stats');
  }
  out({ type: 'presence_stats_after_leave', numClients: now.numClients,
    numUsers: now.numUsers });
  for (const name of names) {
    out({ type: 'extra_publications', who: name,
      count: subs[name].events.drain('publication').length });
  }
}

/** The reader (the variant) disconnects; the server API and a WebSocket writer publish
 * meanwhile; the reader reconnects over a new stream and recovers them. */
async function recovery(input) {
  const { channel, variant } = input;
  const reader = newClient(input, variant, 'reader', { token: input.tokens.reader });
  const writer = newClient(input, input.writer, 'writer', { token: input.tokens.writer });
  await connect(reader);
  await connect(writer);
  const sub = newSub(reader, channel);
  await subscribe(reader, sub);

  await call(writer.publish(channel, encode(writer.protocol, { live: 1 })), 'live publish');
  await nextPublication(sub, 'live');

  reader.disconnect();
  const gone = await reader.events.next('disconnected');
  out({ type: 'disconnected', who: 'reader', code: gone.code, reason: gone.reason,
    clientState: reader.state, subState: sub.state });

  for (let i = 0; i < input.missed; i++) {
    if (i % 2 === 0) {
      const body = { channel, data: { missed: i }, tags: { via: 'api' } };
      out({ type: 'api_publish', result: await apiPublish(input, body) });
    } else {
      await call(writer.publish(channel, encode(writer.protocol, { missed: i })), 'writer publish');
    }
  }

  await connect(reader);
  const ctx = await sub.events.next('subscribed');
  out({ type: 'resubscribed', ...subscribed(ctx) });
  // Recovered publications come right after 'subscribed'; none when recovery failed.
  for (const pub of await sub.events.take('publication', ctx.recovered ? input.missed : 0)) {
    out({ type: 'publication', phase: 'recovered', ...publication(pub) });
  }

  await call(writer.publish(channel, encode(writer.protocol, { after: true })), 'after publish');
  await nextPublication(sub, 'after');
  await sleep(100);
  out({ type: 'extra_publications', count: sub.events.drain('publication').length });
}

/** The hub holding the reader's stream stops (the server ends the stream) and starts again;
 * meanwhile another hub on the same Redis publishes. The SDK reconnects by itself, over the
 * same transport, and recovers what it missed. */
async function restart(input) {
  const { channel, variant } = input;
  const reader = newClient(input, variant, 'reader', { token: input.tokens.reader });
  await connect(reader);
  const sub = newSub(reader, channel);
  await subscribe(reader, sub);
  out({ type: 'api_publish', result: await apiPublish(input, { channel, data: { live: 1 } }) });
  await nextPublication(sub, 'live');

  reader.events.drain('connecting'); // the first connect's
  const answer = await step('restart');
  out({ type: 'restarted', ...answer });
  const ctx = await reader.events.next('connected', () => true, 3 * WAIT_MS);
  // The first: why the stream ended; then the failed attempts while the hub was down.
  const attempts = reader.events.drain('connecting').map((c) => [c.code, c.reason]);
  out({ type: 'connecting', first: attempts[0] ?? null, count: attempts.length });
  out({ type: 'reconnected', ...connection(reader, ctx) });
  const again = await sub.events.next('subscribed');
  out({ type: 'resubscribed', ...subscribed(again) });
  for (const pub of await sub.events.take('publication', again.recovered ? input.missed : 0)) {
    out({ type: 'publication', phase: 'recovered', ...publication(pub) });
  }

  // Commands still reach the restarted hub (the new session and node), and so do publications.
  await call(sub.publish(encode(reader.protocol, { after: true })), 'after publish');
  await nextPublication(sub, 'after');
  await sleep(100);
  out({ type: 'extra_publications', count: sub.events.drain('publication').length });
}

/** A WebSocket endpoint nothing listens on, then the variant's transport: the SDK falls back,
 * works over it, and sticks to it when it reconnects. */
async function fallback(input) {
  const { channel, variant } = input;
  const { transport } = VARIANTS[variant];
  const endpoints = [
    { transport: 'websocket', endpoint: input.deadWebsocket },
    { transport, endpoint: `${input.base}/connection/${transport}` },
  ];
  const client = newClient(input, variant, 'client', { token: input.token }, endpoints);
  const transportErrors = () => client.events.drain('error')
    .map((e) => ({ type: e.type, transport: e.transport ?? null, code: e.error.code }));
  await connect(client);
  out({ type: 'errors', phase: 'first', errors: transportErrors() });
  const sub = newSub(client, channel);
  sub.owner = client;
  await subscribe(client, sub);
  for (const [who, value] of input.publications) {
    await publishAs(input, { client: sub }, who, channel, value);
    await nextPublication(sub, 'first');
  }

  client.disconnect();
  await client.events.next('disconnected');
  await connect(client);
  out({ type: 'errors', phase: 'again', errors: transportErrors() });
  await sub.events.next('subscribed');
  await publishAs(input, { client: sub }, 'client', channel, { again: true });
  await nextPublication(sub, 'again');
}

/** A WebSocket client and a client of the variant in one channel see each other's
 * publications (and the server API's), and each other in presence. */
async function mixed(input) {
  const { channel, variant } = input;
  const kinds = { websocket: input.websocket, emulated: variant };
  const subs = {};
  const all = {};
  for (const [name, kind] of Object.entries(kinds)) {
    all[name] = newClient(input, kind, name, { token: input.tokens[name] });
    await connect(all[name]);
    subs[name] = newSub(all[name], channel);
    subs[name].owner = all[name];
    await subscribe(all[name], subs[name]);
  }
  for (const [who, value] of input.publications) {
    await publishAs(input, subs, who, channel, value);
    for (const receiver of Object.keys(kinds)) {
      const ctx = await subs[receiver].events.next('publication');
      out({ type: 'publication', receiver, ...publication(ctx) });
    }
  }
  for (const name of Object.keys(kinds)) {
    const here = await call(subs[name].presence(), `${name} presence`);
    out({ type: 'presence', who: name, clients: presence(here) });
    const full = await call(subs[name].history({ limit: 10 }), `${name} history`);
    out({ type: 'history', who: name, ...history(full) });
  }
  await sleep(100);
  for (const name of Object.keys(kinds)) {
    out({ type: 'extra_publications', who: name,
      count: subs[name].events.drain('publication').length });
  }
}

/** A burst of publications (the hub writes them several to a chunk) and, for `stayMs`, the
 * hub's pings, answered through /emulation: nothing is lost or reordered, and the stream
 * stays up. */
async function burst(input) {
  const { channel, variant } = input;
  const client = newClient(input, variant, 'client', { token: input.token });
  await connect(client);
  client.events.drain('connecting'); // the connect's own
  const since = Date.now();
  const sub = newSub(client, channel);
  await subscribe(client, sub);
  const commands = input.docs.map((data) => ({ publish: { channel, data } }));
  const response = await withTimeout(
    fetch(`${input.api.url}/api/batch`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': input.api.key },
      body: JSON.stringify({ commands }),
    }),
    'server API batch',
  );
  out({ type: 'api_batch', status: response.status });
  const got = (await sub.events.take('publication', input.docs.length)).map(publication);
  out({
    type: 'burst',
    offsets: got.map((p) => p.offset),
    encodings: [...new Set(got.map((p) => p.encoding))],
    same: got.every((p, i) => JSON.stringify(p.data) === JSON.stringify(input.docs[i])),
  });

  await sleep(Math.max(0, input.stayMs - (Date.now() - since)));
  const drops = [...client.events.drain('connecting'), ...client.events.drain('disconnected')];
  out({ type: 'stayed', state: client.state, drops: drops.map((d) => [d.code, d.reason]) });
  await call(sub.publish(encode(client.protocol, { still: 'here' })), 'publish');
  await nextPublication(sub, 'after');
}

const SCENARIOS = { basics, recovery, restart, fallback, mixed, burst };

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async function main() {
  const input = await readLine('the input');
  const scenario = SCENARIOS[input.scenario];
  if (!scenario) {
    throw new Error(`unknown scenario ${JSON.stringify(input.scenario)}`);
  }
  if (!VARIANTS[input.variant]) {
    throw new Error(`unknown variant ${JSON.stringify(input.variant)}`);
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
