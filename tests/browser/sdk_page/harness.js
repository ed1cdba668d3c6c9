// Helpers for tests/browser/test_sdk.py: the real centrifuge-js browser bundle in Chromium.
//
// json.html or protobuf.html loads one of the SDK's UMD bundles (global `Centrifuge`), then
// this file, which puts `window.H` on the page. The Python tests call its functions with
// `page.evaluate` and assert on what they return: plain JSON values (payloads decoded from
// JSON when the Protobuf SDK hands them over as bytes, with `encoding` saying which). The
// harness only drives the SDK and waits; every wait is bounded by WAIT_MS, and a wait that
// times out rejects, which fails the test with the message.

'use strict';

(() => {
  const WAIT_MS = 5000;
  const decoder = new TextDecoder();

  function withTimeout(promise, what, ms = WAIT_MS) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  /** Keeps every event of the given names an emitter fires, to be taken in order. */
  class Recorder {
    constructor(emitter, names, label) {
      this.label = label;
      this.queues = new Map(names.map((name) => [name, []]));
      this.waiters = new Map(names.map((name) => [name, []]));
      for (const name of names) {
        emitter.on(name, (ctx) => {
          const waiter = this.waiters.get(name).shift();
          if (waiter) {
            waiter(ctx);
          } else {
            this.queues.get(name).push(ctx);
          }
        });
      }
    }

    next(name, ms = WAIT_MS) {
      const queue = this.queues.get(name);
      if (queue.length) {
        return Promise.resolve(queue.shift());
      }
      let waiter;
      const promise = new Promise((resolve) => {
        waiter = resolve;
        this.waiters.get(name).push(waiter);
      });
      return withTimeout(promise, `${this.label}: '${name}' event`, ms).catch((error) => {
        const waiters = this.waiters.get(name);
        waiters.splice(waiters.indexOf(waiter), 1);
        throw error;
      });
    }

    async take(name, count, ms = WAIT_MS) {
      const events = [];
      for (let i = 0; i < count; i++) {
        events.push(await this.next(name, ms));
      }
      return events;
    }

    /** Events of `name` not taken yet (and forget them). */
    drain(name) {
      return this.queues.get(name).splice(0);
    }
  }

  /** A payload the SDK gave back: {encoding, value} (bytes are parsed as JSON). */
  function decode(data) {
    if (data instanceof Uint8Array) {
      return { encoding: 'bytes', value: data.length ? JSON.parse(decoder.decode(data)) : null };
    }
    return { encoding: 'json', value: data === undefined ? null : data };
  }

  function publication(ctx) {
    const { encoding, value } = decode(ctx.data);
    // Protobuf gives absent tags as an empty map, JSON as undefined: both are "none".
    const tags = ctx.tags && Object.keys(ctx.tags).length ? ctx.tags : null;
    return { channel: ctx.channel, encoding, data: value, offset: ctx.offset ?? null, tags };
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

  const SUB_EVENTS = ['subscribing', 'subscribed', 'unsubscribed', 'publication', 'error'];

  const H = {
    protocol: document.documentElement.dataset.protocol,
    client: null,
    subs: new Map(),

    /** Make the page's client (not connected yet). */
    newClient(url, token) {
      const client = new Centrifuge(url, {
        token,
        name: 'tidings-browser-tests',
        timeout: 3000,
        minReconnectDelay: 50,
        maxReconnectDelay: 500,
      });
      client.events = new Recorder(client, ['connected', 'disconnected', 'error'], 'client');
      H.client = client;
      return client;
    },

    /** Connect the page's client; its connected context. */
    async connect() {
      const client = H.client;
      client.connect();
      try {
        await client.ready(WAIT_MS);
      } catch (error) {
        const gone = client.events.drain('disconnected');
        throw new Error(`not connected: ${JSON.stringify(error)} ${JSON.stringify(gone)}`);
      }
      const ctx = await client.events.next('connected');
      return { client: ctx.client, transport: ctx.transport };
    },

    /** Disconnect the page's client (its subscriptions wait to recover); the states after. */
    async disconnect() {
      H.client.disconnect();
      await H.client.events.next('disconnected');
      return {
        client: H.client.state,
        subs: Object.fromEntries([...H.subs].map(([channel, sub]) => [channel, sub.state])),
      };
    },

    newSub(channel, options = {}) {
      const sub = H.client.newSubscription(channel, options);
      sub.events = new Recorder(sub, SUB_EVENTS, `sub ${channel}`);
      H.subs.set(channel, sub);
      return sub;
    },

    /** Subscribe; the subscribed context. */
    async subscribe(channel, options = {}) {
      const sub = H.subs.get(channel) ?? H.newSub(channel, options);
      sub.subscribe();
      try {
        await sub.ready(WAIT_MS);
      } catch (error) {
        const gone = sub.events.drain('unsubscribed');
        throw new Error(`not subscribed: ${JSON.stringify(error)} ${JSON.stringify(gone)}`);
      }
      return H.subscribed(channel);
    },

    /** The next subscribed context of `channel` (after a reconnect, say). */
    async subscribed(channel) {
      return subscribed(await H.subs.get(channel).events.next('subscribed'));
    },

    /** The next `count` publications of `channel`. */
    async publications(channel, count) {
      const got = await H.subs.get(channel).events.take('publication', count);
      return got.map(publication);
    },

    /** Publications of `channel` that came beyond those taken, after waiting `ms`. */
    async extra(channel, ms = 150) {
      await sleep(ms);
      return H.subs.get(channel).events.drain('publication').map(publication);
    },

    deltaStats(channel) {
      return H.subs.get(channel).deltaStats();
    },
  };

  window.H = H;
})();
