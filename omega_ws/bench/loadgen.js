'use strict';
// The benchmark's load generator: many WebSocket clients in one Node process,
// so that the server, not the generator, is what runs out of CPU.  Loopback
// only, bounded in time and count.  Prints one JSON object per line.
//
//   node loadgen.js fanout     URL SUBS WINDOW SECONDS SIZE WARMUP
//   node loadgen.js idle       URL CONNS
//   node loadgen.js handshakes URL CONNS CONCURRENCY
const WebSocket = require('ws');

const [mode, url, ...args] = process.argv.slice(2);
const emit = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const cpuUs = () => { const c = process.cpuUsage(); return c.user + c.system; };

function open(target) {
  return new Promise((resolve, reject) => {
    // No compression, no UTF-8 check: the generator must stay cheap per message.
    const ws = new WebSocket(target, { perMessageDeflate: false, handshakeTimeout: 30000,
                                       skipUTF8Validation: true });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

async function openMany(count, concurrency) {
  const sockets = [];
  let next = 0;
  async function worker() {
    while (next < count) {
      next += 1;
      sockets.push(await open(url));
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return sockets;
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

async function fanout(subs, window, seconds, size, warmup) {
  const subscribers = await openMany(subs, 200);
  const publisher = await open(url);
  const pending = new Map();  // seq -> deliveries still expected
  const latencies = [];
  let seq = 0, sent = 0, completed = 0, deliveries = 0;
  let measuring = false, stopping = false;
  let resolveDone;
  const done = new Promise((r) => { resolveDone = r; });
  const pad = 'x'.repeat(Math.max(0, size - 40));

  function publish() {
    if (stopping) return;
    seq += 1;
    pending.set(seq, subs);
    let body = JSON.stringify({ seq, t: nowUs(), pad });
    publisher.send(body);
    sent += 1;
  }
  subscribers.forEach((ws, index) => {
    const sample = index % 10 === 0;  // latency from a tenth of the subscribers
    ws.on('message', (data) => {
      // {"seq":N,"t":T,...}: both numbers from the head, without parsing it all.
      const head = data.toString('latin1', 0, 48);
      const comma = head.indexOf(',', 7);
      const messageSeq = Number(head.slice(7, comma));
      if (measuring) {
        deliveries += 1;
        if (sample) latencies.push(nowUs() - Number(head.slice(comma + 5, head.indexOf(',', comma + 5))));
      }
      const left = pending.get(messageSeq) - 1;
      if (left > 0) { pending.set(messageSeq, left); return; }
      pending.delete(messageSeq);
      if (measuring) completed += 1;
      if (stopping) { if (pending.size === 0) resolveDone(); return; }
      publish();  // closed loop: one out, one in
    });
  });
  publisher.on('message', () => {});
  for (let i = 0; i < window; i += 1) publish();
  await new Promise((r) => setTimeout(r, warmup * 1000));
  measuring = true;
  const start = nowUs(), cpuStart = cpuUs();
  emit({ event: 'measuring' });
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const elapsed = (nowUs() - start) / 1e6, cpu = (cpuUs() - cpuStart) / 1e6;
  measuring = false;
  emit({ event: 'measured' });
  stopping = true;
  await Promise.race([done, new Promise((r) => setTimeout(r, 5000))]);
  latencies.sort((a, b) => a - b);
  emit({
    event: 'result', subscribers: subs, window, seconds: elapsed, messages: completed,
    deliveries, deliveries_per_s: deliveries / elapsed,
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
  fanout: () => fanout(number(0, 1000), number(1, 20), number(2, 8), number(3, 100), number(4, 2)),
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
