"use strict";
// The npm centrifuge SDK (globalThis.Centrifuge, from its browser bundle), as
// tests/test_e2e_browser.py drives it: one client, one subscription, and every
// event the SDK emits recorded in order. Waits are bounded.
(() => {
  const events = [];
  const waiters = [];
  let client = null;
  let sub = null;

  function record(kind, ctx) {
    const event = { kind, ...JSON.parse(JSON.stringify(ctx || {})) };
    events.push(event);
    harness.log(kind, event);
    for (const w of waiters.splice(0)) w();
  }

  // Resolves with the first `count` events of `kind` once there are that many.
  function until(kind, count = 1, ms = 5000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(
        `timed out after ${ms} ms waiting for ${count} "${kind}" events; had: ` +
        JSON.stringify(events))), ms);
      const check = () => {
        const seen = events.filter(e => e.kind === kind);
        if (seen.length >= count) { clearTimeout(timer); resolve(seen.slice(0, count)); }
        else waiters.push(check);
      };
      check();
    });
  }

  self.sdk = {
    until,
    events: kind => events.filter(e => kind === undefined || e.kind === kind),
    state: () => ({ client: client && client.state, sub: sub && sub.state }),

    // Connects and subscribes to `channel`; resolves with the "connected" and
    // "subscribed" events.
    async start(url, channel, ms = 5000) {
      // Reconnects after 0.5 to 1 s: time enough for the test to publish meanwhile.
      client = new Centrifuge(url, { minReconnectDelay: 500, maxReconnectDelay: 1000 });
      for (const kind of ["connecting", "connected", "disconnected", "error"]) {
        client.on(kind, ctx => record(kind, kind === "error" ? { error: ctx.error } : ctx));
      }
      sub = client.newSubscription(channel);
      for (const kind of ["subscribing", "subscribed", "unsubscribed", "publication", "error"]) {
        sub.on(kind, ctx => record("sub." + kind, ctx));
      }
      sub.subscribe();
      client.connect();
      const [connected] = await until("connected", 1, ms);
      const [subscribed] = await until("sub.subscribed", 1, ms);
      return { connected, subscribed };
    },

    disconnect() { client.disconnect(); },
    connect() { client.connect(); },
  };
})();
