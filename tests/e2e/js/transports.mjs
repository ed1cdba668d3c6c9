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
// the next stdin line, the test's answer. As scenarios.mjs does (see common.mjs), the script
// prints one JSON object per line on stdout, what the SDK reported, and ends with
// {"type": "done"}, or with {"type": "failed", "error"} and exit code 1. The assertions are
// made on the Python side.
//
// Node 20 has fetch, ReadableStream, TextDecoder and AbortController, all http_stream needs,
// but no EventSource: SSE takes it from the `eventsource` package when it is installed.

import {
  WAIT_MS, apiPublish, call, connect, connection, encode, history, joinRoom, leaveRoom, main,
  makeClient, newSub, nextPublication, out, presence, publication, readLine, recoveryScenario,
  resubscribed, sleep, subscribe, withTimeout
} from './common.mjs';

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
// Helpers
// ---------------------------------------------------------------------------------------------

/** Ask the test to act (`name`), and wait for its answer. */
async function step(name, data = {}) {
  out({ type: 'step', name, ...data });
  return withTimeout(readLine(`the answer to step ${name}`), `step ${name}`, 3 * WAIT_MS);
}

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
  const client = makeClient(endpoints ?? endpoint(input, transport), protocol, label, {
    ...(EventSourceImpl !== null ? { eventsource: EventSourceImpl } : {}),
    emulationEndpoint: `${input.base}/emulation`,
    ...options,
  });
  client.kind = kind;
  return client;
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
  const make = (name, options) => newClient(input, variant, name, options);
  const room = await joinRoom(input, make);
  const { names, subs } = room;

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
  await leaveRoom(room);
  for (const name of names) {
    out({ type: 'extra_publications', who: name,
      count: subs[name].events.drain('publication').length });
  }
}

/** The reader (the variant) disconnects; the server API and a WebSocket writer publish
 * meanwhile; the reader reconnects over a new stream and recovers them. */
async function recovery(input) {
  const reader = newClient(input, input.variant, 'reader', { token: input.tokens.reader });
  const writer = newClient(input, input.writer, 'writer', { token: input.tokens.writer });
  await recoveryScenario(input, reader, writer);
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
  await resubscribed(sub, input.missed);

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

await main(SCENARIOS, (input) => {
  if (!VARIANTS[input.variant]) {
    throw new Error(`unknown variant ${JSON.stringify(input.variant)}`);
  }
});
