'use strict';
/*
 * Drives the stock npm `centrifuge` SDK for the Python end-to-end tests.
 *
 *   node tests/js/driver.js URL '{"token": "...", "getToken": true, ...}'
 *
 * Options (all optional): token, getToken (bool: install a getToken that
 * returns what the last set_token command gave), minReconnectDelay,
 * maxReconnectDelay, timeout, maxServerPingDelay, name.
 *
 * stdin: one JSON command a line, {"op": ..., "ref": ..., ...}:
 *   connect, disconnect, subscribe {channel, joinLeave?, since?},
 *   unsubscribe {channel}, publish {channel, data}, history {channel, limit?, since?,
 *   reverse?}, presence {channel}, presence_stats {channel}, rpc {method, data},
 *   set_token {token}, exit.
 * stdout: one JSON line per SDK event, {"event": ..., "source": "client" |
 * "subscription" | "server-sub" | "driver", ...}, and per command
 * {"event": "result", "op", "ref", "value"} or
 * {"event": "fail", "op", "ref", "code", "message"}.
 *
 * Nothing here may throw out of an SDK event handler: the SDK would
 * disconnect with code 2 and Node would die of an unhandled rejection.
 */

const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');
const readline = require('readline');

function emit(record) {
  let line;
  try {
    line = JSON.stringify(record);
  } catch (e) {
    line = JSON.stringify({ event: 'driver_error', message: 'unserialisable event: ' + String(e) });
  }
  try {
    process.stdout.write(line + '\n');
  } catch (e) {
    // stdout gone: the test is over.
  }
}

function guarded(fn) {
  return function (...args) {
    try {
      fn(...args);
    } catch (e) {
      emit({ event: 'driver_error', source: 'driver', message: String((e && e.stack) || e) });
    }
  };
}

process.on('uncaughtException', (e) => {
  emit({ event: 'driver_error', source: 'driver', message: 'uncaught: ' + String((e && e.stack) || e) });
});
process.on('unhandledRejection', (e) => {
  emit({ event: 'driver_error', source: 'driver', message: 'unhandled rejection: ' + String((e && e.stack) || e) });
});

const url = process.argv[2];
let options = {};
try {
  options = JSON.parse(process.argv[3] || '{}');
} catch (e) {
  emit({ event: 'driver_error', source: 'driver', message: 'bad options: ' + String(e) });
  process.exit(2);
}

let nextToken = options.nextToken || '';

const config = {
  websocket: WebSocket,
  minReconnectDelay: options.minReconnectDelay ?? 50,
  maxReconnectDelay: options.maxReconnectDelay ?? 200,
  timeout: options.timeout ?? 5000,
};
if (options.maxServerPingDelay !== undefined) config.maxServerPingDelay = options.maxServerPingDelay;
if (options.name !== undefined) config.name = options.name;
if (options.token) config.token = options.token;
if (options.getToken) {
  config.getToken = async () => {
    emit({ event: 'get_token', source: 'driver', token: nextToken });
    return nextToken;
  };
}

const client = new Centrifuge(url, config);

function errorFields(error) {
  if (!error || typeof error !== 'object') return { code: null, message: String(error) };
  return { code: error.code ?? null, message: error.message ?? '', temporary: error.temporary ?? false };
}

// Client events.
client.on('connecting', guarded((ctx) => emit({ event: 'connecting', source: 'client', code: ctx.code, reason: ctx.reason })));
client.on('connected', guarded((ctx) => emit({ event: 'connected', source: 'client', client: ctx.client, transport: ctx.transport, data: ctx.data ?? null })));
client.on('disconnected', guarded((ctx) => emit({ event: 'disconnected', source: 'client', code: ctx.code, reason: ctx.reason })));
client.on('error', guarded((ctx) => emit({ event: 'error', source: 'client', type: ctx.type, ...errorFields(ctx.error) })));
client.on('message', guarded((ctx) => emit({ event: 'message', source: 'client', data: ctx.data })));
// Server-side subscriptions (the test server has none, but report them if they come).
for (const name of ['subscribed', 'subscribing', 'unsubscribed', 'publication', 'join', 'leave']) {
  client.on(name, guarded((ctx) => emit({ ...ctx, event: name, source: 'server-sub' })));
}

function subscriptionFor(channel, cmd) {
  let sub = client.getSubscription(channel);
  if (sub) return sub;
  const subOptions = {
    minResubscribeDelay: options.minReconnectDelay ?? 50,
    maxResubscribeDelay: options.maxReconnectDelay ?? 200,
  };
  if (cmd.joinLeave) subOptions.joinLeave = true;
  if (cmd.since) subOptions.since = cmd.since;
  if (cmd.recoverable) subOptions.recoverable = true;
  if (cmd.positioned) subOptions.positioned = true;
  sub = client.newSubscription(channel, subOptions);
  sub.on('subscribing', guarded((ctx) => emit({ event: 'subscribing', source: 'subscription', channel: ctx.channel, code: ctx.code, reason: ctx.reason })));
  sub.on('subscribed', guarded((ctx) => emit({
    event: 'subscribed', source: 'subscription', channel: ctx.channel,
    recovered: ctx.recovered, wasRecovering: ctx.wasRecovering, recoverable: ctx.recoverable,
    positioned: ctx.positioned, hasRecoveredPublications: ctx.hasRecoveredPublications,
    streamPosition: ctx.streamPosition ?? null,
  })));
  sub.on('publication', guarded((ctx) => emit({
    event: 'publication', source: 'subscription', channel: ctx.channel, data: ctx.data,
    offset: ctx.offset ?? null, info: ctx.info ?? null, tags: ctx.tags ?? null,
  })));
  sub.on('join', guarded((ctx) => emit({ event: 'join', source: 'subscription', channel: ctx.channel, info: ctx.info })));
  sub.on('leave', guarded((ctx) => emit({ event: 'leave', source: 'subscription', channel: ctx.channel, info: ctx.info })));
  sub.on('unsubscribed', guarded((ctx) => emit({ event: 'unsubscribed', source: 'subscription', channel: ctx.channel, code: ctx.code, reason: ctx.reason })));
  sub.on('error', guarded((ctx) => emit({ event: 'error', source: 'subscription', channel: ctx.channel, type: ctx.type, ...errorFields(ctx.error) })));
  return sub;
}

function settle(cmd, promise) {
  Promise.resolve(promise).then(
    (value) => emit({ event: 'result', source: 'driver', op: cmd.op, ref: cmd.ref ?? null, value: value ?? null }),
    (error) => emit({ event: 'fail', source: 'driver', op: cmd.op, ref: cmd.ref ?? null, ...errorFields(error) }),
  ).catch(() => {});
}

function done(cmd, value) {
  emit({ event: 'result', source: 'driver', op: cmd.op, ref: cmd.ref ?? null, value: value ?? null });
}

function historyOptions(cmd) {
  const opts = {};
  if (cmd.limit !== undefined) opts.limit = cmd.limit;
  if (cmd.since) opts.since = cmd.since;
  if (cmd.reverse) opts.reverse = true;
  return opts;
}

function handle(cmd) {
  switch (cmd.op) {
    case 'connect':
      client.connect();
      return done(cmd);
    case 'disconnect':
      client.disconnect();
      return done(cmd);
    case 'subscribe':
      subscriptionFor(cmd.channel, cmd).subscribe();
      return done(cmd);
    case 'unsubscribe': {
      const sub = client.getSubscription(cmd.channel);
      if (sub) sub.unsubscribe();
      return done(cmd, sub ? true : false);
    }
    case 'publish':
      return settle(cmd, client.publish(cmd.channel, cmd.data));
    case 'history':
      return settle(cmd, client.history(cmd.channel, historyOptions(cmd)));
    case 'presence':
      return settle(cmd, client.presence(cmd.channel));
    case 'presence_stats':
      return settle(cmd, client.presenceStats(cmd.channel));
    case 'rpc':
      return settle(cmd, client.rpc(cmd.method, cmd.data));
    case 'set_token':
      nextToken = cmd.token || '';
      return done(cmd);
    case 'state':
      return done(cmd, client.state);
    case 'exit':
      try {
        client.disconnect();
      } catch (e) {
        // exiting anyway
      }
      done(cmd);
      process.exit(0);
      return undefined;
    default:
      return emit({ event: 'fail', source: 'driver', op: cmd.op, ref: cmd.ref ?? null, code: null, message: 'unknown op' });
  }
}

const input = readline.createInterface({ input: process.stdin, terminal: false });
input.on('line', (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    emit({ event: 'driver_error', source: 'driver', message: 'bad command: ' + String(e) });
    return;
  }
  try {
    handle(cmd);
  } catch (e) {
    emit({ event: 'fail', source: 'driver', op: cmd.op, ref: cmd.ref ?? null, code: null, message: String((e && e.message) || e) });
  }
});
// The test is gone: stop too.
input.on('close', () => process.exit(0));

emit({ event: 'ready', source: 'driver' });
