// What the Node scripts driving the real centrifuge-js SDK share: scenarios.mjs (WebSocket,
// JSON and Protobuf) and transports.mjs (HTTP-streaming and SSE).
//
// Both read one JSON line on stdin, the input: {"scenario": NAME, ...the scenario's parameters},
// and print one JSON object per line on stdout: what the SDK reported, exactly as the SDK gave
// it (payloads decoded from JSON when the Protobuf SDK hands them over as bytes, with `encoding`
// saying which). The last line is {"type": "done"} on success, or {"type": "failed", "error"}
// when the scenario could not go on (a wait timed out, a call was refused unexpectedly); the
// exit code is then 1. The Python side asserts on the values: the scripts only drive the SDK
// and wait, they check nothing beyond what they need to go on.
//
// Every wait is bounded by WAIT_MS, and the whole scenario by the input's `deadlineMs`.

import readline from 'node:readline';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';

export const WAIT_MS = 5000;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---------------------------------------------------------------------------------------------
// Output and input
// ---------------------------------------------------------------------------------------------

const started = performance.now();

export function out(record) {
  const ms = Math.round(performance.now() - started);
  process.stdout.write(JSON.stringify({ ...record, ms }) + '\n');
}

function finish(code) {
  // Exit once stdout is flushed (a pipe to Python is asynchronous in Node).
  process.stdout.write('', () => process.exit(code));
}

export function describe(error) {
  if (error instanceof Error) {
    return `${error.name}: ${error.message}`;
  }
  return JSON.stringify(error);
}

const stdinLines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** The next JSON line on stdin (the input, or the test's answer to a step). */
export async function readLine(what) {
  const { value, done } = await stdinLines.next();
  if (done) {
    throw new Error(`stdin closed while waiting for ${what}`);
  }
  return JSON.parse(value);
}

// ---------------------------------------------------------------------------------------------
// Payloads: JSON values as the SDK of each protocol wants them
// ---------------------------------------------------------------------------------------------

export function encode(protocol, value) {
  return protocol === 'protobuf' ? encoder.encode(JSON.stringify(value)) : value;
}

/** A payload the SDK gave back: {encoding, value} (bytes are parsed as JSON). */
export function decode(data) {
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

export function clientInfo(info) {
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

export function publication(ctx) {
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

export function subscribed(ctx) {
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

export function presence(result) {
  return Object.entries(result.clients)
    .map(([key, info]) => ({ key, ...clientInfo(info) }))
    .sort((a, b) => a.client.localeCompare(b.client));
}

export function history(result) {
  return {
    offset: result.offset,
    epoch: result.epoch,
    publications: result.publications.map(publication),
  };
}

// ---------------------------------------------------------------------------------------------
// Waiting for SDK events
// ---------------------------------------------------------------------------------------------

export function withTimeout(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
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

// ---------------------------------------------------------------------------------------------
// Clients and subscriptions
// ---------------------------------------------------------------------------------------------

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

/** Every client made, disconnected when the scenario ends. */
const clients = [];

/**
 * A client of `protocol` ('json' or 'protobuf') for `endpoint` (a WebSocket URL, or a list of
 * transports), with a Recorder as `client.events`; `options` go to the SDK over the defaults.
 */
export function makeClient(endpoint, protocol, label, options = {}) {
  const Centrifuge = protocol === 'protobuf' ? ProtobufCentrifuge : JsonCentrifuge;
  const client = new Centrifuge(endpoint, {
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

export function newSub(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  sub.events = new Recorder(sub, SUB_EVENTS, `${client.label} sub ${channel}`);
  return sub;
}

/** What a connected client reports: its context, and the session of an emulated transport
 * (the SDK keeps the connect reply's `session` and `node` to address its /emulation posts). */
export function connection(client, ctx) {
  return {
    who: client.label,
    kind: client.kind,
    protocol: client.protocol,
    client: ctx.client,
    transport: ctx.transport,
    inUse: client._transport ? client._transport.name() : null,
    session: client._session || null,
    node: client._node || null,
  };
}

export async function connect(client) {
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

export async function subscribe(client, sub) {
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

/** Take the subscription's next publication and print it for `phase`. */
export async function nextPublication(sub, phase) {
  out({ type: 'publication', phase, ...publication(await sub.events.next('publication')) });
}

/** After a reconnect: the subscription's 'subscribed' event, then the publications it
 * recovered (`missed` of them; none when recovery failed), printed. */
export async function resubscribed(sub, missed) {
  const ctx = await sub.events.next('subscribed');
  out({ type: 'resubscribed', ...subscribed(ctx) });
  // Recovered publications come right after 'subscribed'.
  for (const pub of await sub.events.take('publication', ctx.recovered ? missed : 0)) {
    out({ type: 'publication', phase: 'recovered', ...publication(pub) });
  }
  return ctx;
}

/** An SDK call's result; a failure naming `what` when it is refused or times out. */
export async function call(promise, what) {
  try {
    return await withTimeout(promise, what);
  } catch (error) {
    throw new Error(`${what} failed: ${describe(error)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The server API
// ---------------------------------------------------------------------------------------------

export async function apiCall(input, method, body) {
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

export async function apiPublish(input, body) {
  return apiCall(input, 'publish', body);
}

// ---------------------------------------------------------------------------------------------
// Scenarios and their parts, in both scripts
// ---------------------------------------------------------------------------------------------

/** A client per name of `input.tokens` (made by `make(name, options)`), connected and then
 * subscribed to `input.channel` with join/leave; the first sees the others join. Returns
 * the names in order, and the clients and their subscriptions (`sub.owner`) by name. */
export async function joinRoom(input, make) {
  const names = Object.keys(input.tokens);
  const all = {};
  const subs = {};
  for (const name of names) {
    all[name] = make(name, { token: input.tokens[name] });
    await connect(all[name]);
  }
  for (const name of names) {
    subs[name] = newSub(all[name], input.channel, { joinLeave: true });
    subs[name].owner = all[name];
    await subscribe(all[name], subs[name]);
  }
  const [first, ...others] = names;
  for (const name of others) {
    const id = all[name].clientId;
    const ctx = await subs[first].events.next('join', (j) => j.info.client === id);
    out({ type: 'join', who: first, channel: ctx.channel, info: clientInfo(ctx.info) });
  }
  return { names, all, subs };
}

/** The last client of a `joinRoom` room leaves: the first sees it go, and presence stats
 * drop (waited for: the hub may take a moment to notice an emulated client's stream end). */
export async function leaveRoom({ names, all, subs }) {
  const [first, last] = [names[0], names[names.length - 1]];
  const watcher = subs[first];
  const leaving = all[last].clientId;
  all[last].disconnect();
  const leave = await watcher.events.next('leave', (l) => l.info.client === leaving);
  out({ type: 'leave', who: first, channel: leave.channel, info: clientInfo(leave.info) });
  const deadline = Date.now() + WAIT_MS;
  let now = await call(watcher.presenceStats(), 'presence stats');
  while (now.numClients === names.length && Date.now() < deadline) {
    await sleep(20);
    now = await call(watcher.presenceStats(), 'presence stats');
  }
  out({ type: 'presence_stats_after_leave', numClients: now.numClients, numUsers: now.numUsers });
}

/** The `recovery` scenario, its two clients given: the reader disconnects; the server API and
 * the writer publish `input.missed` publications meanwhile (alternately); the reader
 * reconnects and recovers them, then gets one more live. */
export async function recoveryScenario(input, reader, writer) {
  const { channel } = input;
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
  await resubscribed(sub, input.missed);

  await call(writer.publish(channel, encode(writer.protocol, { after: true })), 'after publish');
  await nextPublication(sub, 'after');
  await sleep(100);
  out({ type: 'extra_publications', count: sub.events.drain('publication').length });
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

/**
 * Read the input, run its scenario (one of `scenarios`, by name) within its deadline, then
 * print `done` or `failed` and exit. `check(input)` may refuse the input by throwing.
 */
export async function main(scenarios, check = () => {}) {
  let failed = false;
  try {
    const input = await readLine('the input');
    const scenario = scenarios[input.scenario];
    if (!scenario) {
      throw new Error(`unknown scenario ${JSON.stringify(input.scenario)}`);
    }
    check(input);
    const deadline = input.deadlineMs ?? 15000;
    await withTimeout(scenario(input), `scenario ${input.scenario}`, deadline);
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
}
