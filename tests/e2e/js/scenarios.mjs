// Scenarios run by the real centrifuge-js SDK in Node against a tidings hub, over WebSocket.
//
// Driven by tests/e2e/test_sdk_js.py: it starts the hub, then runs
//
//     node scenarios.mjs
//
// and writes one JSON line on stdin: {"scenario": NAME, "url": WS_URL, "api": {url, key},
// ...the scenario's parameters}. What the script prints, and how it ends, is described in
// common.mjs: one JSON line per thing the SDK reported, then {"type": "done"} or
// {"type": "failed", "error"}. The Python side asserts on the values.

import {
  apiCall, apiPublish, call, connect, decode, encode, history, joinRoom, leaveRoom, main,
  makeClient, newSub, out, presence, publication, recoveryScenario, sleep, subscribe, subscribed,
  withTimeout
} from './common.mjs';

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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

function other(protocol) {
  return protocol === 'json' ? 'protobuf' : 'json';
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/** A JSON client and a Protobuf client in one channel publish to each other. */
async function crossProtocol(input) {
  const { channel } = input;
  const json = makeClient(input.url, 'json', 'json', { token: input.tokens.json });
  const protobuf = makeClient(input.url, 'protobuf', 'protobuf', {
    token: input.tokens.protobuf,
  });
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
  const { protocol } = input;
  const make = (name, options) => makeClient(input.url, protocol, name, options);
  const room = await joinRoom(input, make);
  const { names, subs } = room;
  const first = names[0];
  const watcher = subs[first];

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
  await leaveRoom(room);
  const rest = await call(watcher.presence(), 'presence');
  out({ type: 'presence_after_leave', clients: presence(rest) });
}

/** Disconnect, publications meanwhile (server API and another client), reconnect: recovered. */
async function recovery(input) {
  const { protocol } = input;
  const reader = makeClient(input.url, protocol, 'reader', { token: input.tokens.reader });
  const writer = makeClient(input.url, other(protocol), 'writer', { token: input.tokens.writer });
  await recoveryScenario(input, reader, writer);
}

/** Connection JWTs (one valid, one expired with getToken), and RPC answered by the backend. */
async function tokenRpc(input) {
  const { protocol } = input;
  const client = makeClient(input.url, protocol, 'token', { token: input.token });
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
  const refreshed = makeClient(input.url, protocol, 'expired', {
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
  const client = makeClient(input.url, protocol, 'client', { token: input.token });
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

  const bad = makeClient(input.url, protocol, 'bad-token', { token: input.badToken });
  bad.connect();
  const ctx = await bad.events.next('disconnected');
  out({ type: 'bad_token', code: ctx.code, reason: ctx.reason, state: bad.state,
    connected: bad.events.drain('connected').length });
}

/** The server API's `send` reaches the SDK's `message` event; a `send` to a hub without a
 * message hook closes the connection with 3508. */
async function messages(input) {
  const { protocol } = input;
  const client = makeClient(input.url, protocol, 'client', { token: input.token });
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
  const client = makeClient(input.url, protocol, 'client', { token: input.token });
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
  const client = makeClient(input.url, protocol, 'client', { token: input.token });
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
  const client = makeClient(input.url, protocol, 'client', { token: input.token });
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
      const client = makeClient(input.url, protocol, label, { token: input.token });
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

await main(SCENARIOS);
