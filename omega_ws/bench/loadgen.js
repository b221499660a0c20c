'use strict';
// The benchmark's load generator: many WebSocket clients in one Node process
// (no dependencies), so that the server, not the generator, is what runs out
// of CPU.  Loopback only, bounded in time and count.  Prints one JSON object
// per line.
//
//   node loadgen.js fanout     URL SUBS WINDOW SECONDS SIZE WARMUP [RATE [PUB_URL]]
//
// fanout: closed loop, WINDOW messages in flight; or, with RATE > 0, RATE
// messages/s on a fixed schedule (a tick whose message would make more than
// WINDOW in flight is skipped and counted as held back).  The publisher
// connects to PUB_URL when given (another node), the subscribers to URL.
// A message not delivered to every subscriber within LOST_AFTER_US counts as
// lost (and, in the closed loop, is replaced) instead of stalling the window.
//   node loadgen.js idle       URL CONNS
//   node loadgen.js handshakes URL CONNS CONCURRENCY
const net = require('node:net');

const [mode, url, ...args] = process.argv.slice(2);
const emit = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const cpuUs = () => { const c = process.cpuUsage(); return c.user + c.system; };
const target = new URL(url);
const LOST_AFTER_US = 10e6;

// A minimal WebSocket client on a bare TCP socket: the generator's cost per
// message must stay well below the server's, or it measures itself.  It
// speaks just what the benchmark needs: one handshake, unfragmented text
// frames, pongs for pings.  Client frames use a zero mask key (RFC 6455
// requires a key, not a random one from a load generator).
class Client {
  constructor(socket) {
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    this.onmessage = null;
  }
  send(text) {
    const payload = Buffer.from(text);
    const length = payload.length;
    const header = length < 126 ? Buffer.from([0x81, 0x80 | length, 0, 0, 0, 0])
      : Buffer.from([0x81, 0x80 | 126, length >> 8, length & 255, 0, 0, 0, 0]);
    this.socket.write(Buffer.concat([header, payload]));
  }
  received(chunk) {
    let data = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    let at = 0;
    while (data.length - at >= 2) {
      const opcode = data[at] & 0x0f;
      let length = data[at + 1] & 0x7f, start = at + 2;
      if (length === 126) {
        if (data.length - at < 4) break;
        length = data.readUInt16BE(at + 2); start = at + 4;
      } else if (length === 127) {
        if (data.length - at < 10) break;
        length = Number(data.readBigUInt64BE(at + 2)); start = at + 10;
      }
      if (data.length < start + length) break;
      const payload = data.subarray(start, start + length);
      at = start + length;
      if (opcode === 1 && this.onmessage) this.onmessage(payload);
      else if (opcode === 9) {  // ping: answer with a pong carrying the same payload
        this.socket.write(Buffer.concat([Buffer.from([0x8a, 0x80 | payload.length, 0, 0, 0, 0]), payload]));
      } else if (opcode === 8) this.socket.end();
    }
    this.buffer = at < data.length ? Buffer.from(data.subarray(at)) : Buffer.alloc(0);
  }
  terminate() { this.socket.destroy(); }
}

function open(to = target) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: to.hostname, port: Number(to.port) });
    socket.setNoDelay(true);
    let head = Buffer.alloc(0);
    const timer = setTimeout(() => { socket.destroy(); reject(new Error('handshake timed out')); }, 30000);
    socket.once('error', (error) => { clearTimeout(timer); reject(error); });
    socket.on('connect', () => socket.write(
      `GET ${to.pathname} HTTP/1.1\r\nHost: ${to.host}\r\nUpgrade: websocket\r\n` +
      'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
      'Sec-WebSocket-Version: 13\r\n\r\n'));
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      clearTimeout(timer);
      socket.removeListener('data', onData);
      if (!head.subarray(0, 12).toString().startsWith('HTTP/1.1 101')) {
        socket.destroy();
        reject(new Error(`handshake refused: ${head.subarray(0, 40).toString()}`));
        return;
      }
      const client = new Client(socket);
      socket.on('data', (data) => client.received(data));
      socket.on('error', () => {});
      if (end + 4 < head.length) client.received(head.subarray(end + 4));
      resolve(client);
    };
    socket.on('data', onData);
  });
}

async function openMany(count, concurrency) {
  const sockets = [];
  let next = 0;
  async function worker() {
    while (next < count) {
      next += 1;
      sockets.push(await open());
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return sockets;
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

async function fanout(subs, window, seconds, size, warmup, rate, pubUrl) {
  const subscribers = await openMany(subs, 200);
  const publisher = await open(pubUrl ? new URL(pubUrl) : target);
  const pending = new Map();  // seq -> deliveries still expected
  const sentAt = new Map();  // seq -> when it was sent (for the lost ones)
  const latencies = [];
  let seq = 0, sent = 0, completed = 0, deliveries = 0, published = 0, heldBack = 0, lost = 0;
  let measuring = false, stopping = false;
  let resolveDone;
  const done = new Promise((r) => { resolveDone = r; });
  const pad = 'x'.repeat(Math.max(0, size - 40));

  function publish() {
    if (stopping) return;
    seq += 1;
    pending.set(seq, subs);
    const t = nowUs();
    sentAt.set(seq, t);
    let body = JSON.stringify({ seq, t, pad });
    publisher.send(body);
    sent += 1;
    if (measuring) published += 1;
  }
  function finished(messageSeq) {
    pending.delete(messageSeq);
    sentAt.delete(messageSeq);
    if (stopping) { if (pending.size === 0) resolveDone(); return; }
    if (!rate) publish();  // closed loop: one out, one in
  }
  subscribers.forEach((ws, index) => {
    const sample = index % 10 === 0;  // latency from a tenth of the subscribers
    ws.onmessage = (data) => {
      // {"seq":N,"t":T,...}: both numbers from the head, without parsing it all.
      const head = data.toString('latin1', 0, 48);
      const comma = head.indexOf(',', 7);
      const messageSeq = Number(head.slice(7, comma));
      const expected = pending.get(messageSeq);
      if (expected === undefined) return;  // counted as lost already
      if (measuring) {
        deliveries += 1;
        if (sample) latencies.push(nowUs() - Number(head.slice(comma + 5, head.indexOf(',', comma + 5))));
      }
      if (expected > 1) { pending.set(messageSeq, expected - 1); return; }
      if (measuring) completed += 1;
      finished(messageSeq);
    };
  });
  const sweeper = setInterval(() => {
    const old = nowUs() - LOST_AFTER_US;
    for (const [messageSeq, at] of sentAt) {  // oldest first
      if (at > old) break;
      lost += 1;
      finished(messageSeq);
    }
  }, 500);
  let ticker = null;
  if (rate) {  // a fixed schedule: message i is due at i / rate s
    const begin = nowUs();
    let due = 0;
    ticker = setInterval(() => {
      const now = Math.floor((nowUs() - begin) * rate / 1e6);
      for (; due < now; due += 1) {
        if (pending.size >= window) { if (measuring) heldBack += 1; } else publish();
      }
    }, 1);
  } else {
    for (let i = 0; i < window; i += 1) publish();
  }
  await new Promise((r) => setTimeout(r, warmup * 1000));
  measuring = true;
  const start = nowUs(), cpuStart = cpuUs();
  emit({ event: 'measuring' });
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const elapsed = (nowUs() - start) / 1e6, cpu = (cpuUs() - cpuStart) / 1e6;
  measuring = false;
  emit({ event: 'measured' });
  stopping = true;
  if (ticker) clearInterval(ticker);
  if (pending.size === 0) resolveDone();
  await Promise.race([done, new Promise((r) => setTimeout(r, 5000))]);
  clearInterval(sweeper);
  latencies.sort((a, b) => a - b);
  emit({
    event: 'result', subscribers: subs, window, rate, seconds: elapsed, messages: completed,
    published, held_back: heldBack, lost, deliveries, deliveries_per_s: deliveries / elapsed,
    p50_us: percentile(latencies, 0.5), p99_us: percentile(latencies, 0.99),
    loadgen_cpu_s: cpu,
  });
  for (const ws of [...subscribers, publisher]) ws.terminate();
}

async function idle(conns) {
  const sockets = await openMany(conns, 200);
  emit({ event: 'open', connections: sockets.length });
  // Hold them until told to stop (stdin closes), bounded anyway.
  await new Promise((r) => { process.stdin.on('end', r); process.stdin.resume(); setTimeout(r, 120000); });
  for (const ws of sockets) ws.terminate();
}

async function handshakes(conns, concurrency) {
  const start = nowUs(), cpuStart = cpuUs();
  const sockets = await openMany(conns, concurrency);
  const elapsed = (nowUs() - start) / 1e6;
  emit({ event: 'result', connections: sockets.length, seconds: elapsed,
         handshakes_per_s: sockets.length / elapsed, loadgen_cpu_s: (cpuUs() - cpuStart) / 1e6 });
  for (const ws of sockets) ws.terminate();
}

const number = (i, fallback) => (args[i] === undefined ? fallback : Number(args[i]));
const runs = {
  fanout: () => fanout(number(0, 1000), number(1, 20), number(2, 8), number(3, 100), number(4, 2),
                      number(5, 0), args[6]),
  idle: () => idle(number(0, 5000)),
  handshakes: () => handshakes(number(0, 5000), number(1, 500)),
};
if (!runs[mode] || !url) {
  process.stderr.write('usage: loadgen.js fanout|idle|handshakes URL ...\n');
  process.exit(2);
}
const guard = setTimeout(() => { emit({ event: 'error', error: 'time limit' }); process.exit(1); }, 300000);
guard.unref();
runs[mode]().then(() => process.exit(0), (error) => {
  emit({ event: 'error', error: String(error && error.message || error) });
  process.exit(1);
});
