// The omega-ws dashboard: reads the live feed (GET dashboard/events,
// Server-Sent Events) with fetch() so that it can send the admin API key
// as a header, draws what each snapshot says, and acts through the server
// API (POST api/publish, api/disconnect).  Plain DOM, no library; every
// value from the server is set as text, never as markup.
(function () {
  "use strict";

  var KEY_NEEDED = document.querySelector('meta[name="omega-ws-api-key"]')
    .getAttribute("content") === "required";
  var KEY_ITEM = "omega-ws-api-key";
  var SPAN = 300;            // seconds on the chart
  var SILENCE = 10000;       // ms without a byte before the feed is reopened
  var retryMs = 2000;        // the feed's "retry:" says otherwise
  var last = null;           // the last snapshot
  var series = [];           // [t, received/s, published/s, delivered/s]
  var number = new Intl.NumberFormat("en");

  function $(id) { return document.getElementById(id); }

  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (className) { node.className = className; }
    return node;
  }

  function setText(id, text) {
    var node = $(id);
    var value = String(text);
    if (node.textContent !== value) { node.textContent = value; }
  }

  function fmt(value) {
    if (value === null || value === undefined) { return "-"; }
    if (typeof value === "number") {
      return number.format(Math.round(value * 10) / 10);
    }
    if (typeof value === "boolean") { return value ? "yes" : "no"; }
    if (Array.isArray(value)) { return value.length ? value.join(", ") : "(none)"; }
    return String(value);
  }

  function duration(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
    var m = Math.floor(s % 3600 / 60), r = s % 60;
    if (d) { return d + "d " + h + "h"; }
    if (h) { return h + "h " + m + "m"; }
    if (m) { return m + "m " + r + "s"; }
    return r + "s";
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  // -- the key ------------------------------------------------------------------

  function apiKey() { return sessionStorage.getItem(KEY_ITEM) || ""; }

  function keyHeaders(headers) {
    headers = headers || {};
    if (apiKey()) { headers["X-API-Key"] = apiKey(); }
    return headers;
  }

  var keyWaiters = [];

  function askKey(message) {
    sessionStorage.removeItem(KEY_ITEM);
    $("main").hidden = true;  // nothing to show without the key
    $("key-form").hidden = false;
    $("key-error").hidden = !message;
    $("key-error").textContent = message || "";
    $("key-input").focus();
    return new Promise(function (resolve) { keyWaiters.push(resolve); });
  }

  $("key-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var key = $("key-input").value;
    if (!key) { return; }
    sessionStorage.setItem(KEY_ITEM, key);
    $("key-input").value = "";
    $("key-form").hidden = true;
    var waiters = keyWaiters;
    keyWaiters = [];
    waiters.forEach(function (resolve) { resolve(); });
  });

  // -- the feed -------------------------------------------------------------------

  function setFeed(state, title) {
    var pill = $("feed");
    pill.textContent = state;
    pill.className = "pill " + (state === "live" ? "ok" : "off");
    pill.title = title || "the live feed";
  }

  function handleBlock(block) {
    var name = "message", data = [];
    block.split(/\r?\n/).forEach(function (line) {
      if (!line || line.charAt(0) === ":") { return; }
      var colon = line.indexOf(":");
      var field = colon < 0 ? line : line.slice(0, colon);
      var value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") { name = value; }
      else if (field === "data") { data.push(value); }
      else if (field === "retry" && /^\d+$/.test(value)) { retryMs = Number(value); }
    });
    if (name !== "snapshot" || !data.length) { return; }
    try {
      render(JSON.parse(data.join("\n")));
    } catch (error) {
      console.error("dashboard: cannot show a snapshot:", error);
    }
  }

  async function readFeed(response, controller) {
    var reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    var buffer = "";
    var timer = null;
    function watch() {
      clearTimeout(timer);
      timer = setTimeout(function () { controller.abort(); }, SILENCE);
    }
    watch();
    try {
      for (;;) {
        var chunk = await reader.read();
        if (chunk.done) { return; }
        watch();
        buffer += chunk.value;
        var match;
        while ((match = /\r?\n\r?\n/.exec(buffer)) !== null) {
          handleBlock(buffer.slice(0, match.index));
          buffer = buffer.slice(match.index + match[0].length);
        }
      }
    } finally {
      clearTimeout(timer);
    }
  }

  async function runFeed() {
    for (;;) {
      if (KEY_NEEDED && !apiKey()) {
        setFeed("locked", "waiting for the API key");
        await askKey();
      }
      var controller = new AbortController();
      var wait = retryMs;
      try {
        setFeed("connecting");
        var response = await fetch("dashboard/events", {
          headers: keyHeaders({ "Accept": "text/event-stream" }),
          cache: "no-store", signal: controller.signal
        });
        if (response.status === 401) {
          await response.text();
          setFeed("locked", "the API key was refused");
          await askKey("That key was refused.");
          continue;
        }
        if (!response.ok || !response.body) {
          var refusal = await response.text();
          setFeed("retrying", "HTTP " + response.status + ": " + refusal);
          wait = Math.max(wait, 5000);
        } else {
          setFeed("live");
          await readFeed(response, controller);
          setFeed("reconnecting", "the feed ended");
        }
      } catch (error) {
        setFeed("reconnecting", String(error));
      }
      await sleep(wait);
    }
  }

  // -- drawing ----------------------------------------------------------------------

  function render(s) {
    last = s;
    $("main").hidden = false;
    setText("version", "v" + s.version);
    setText("node", s.node.slice(0, 8));
    $("node").title = s.node;
    setText("uptime", duration(s.uptime));
    var problems = s.broker.problems;
    var health = $("health");
    health.textContent = problems.length ? "unhealthy" : "healthy";
    health.className = "pill " + (problems.length ? "bad" : "ok");
    health.title = problems.join("; ") || "GET /health answers 200";
    updateSeries(s);
    drawChart();
    drawConnections(s.connections);
    drawBroker(s.broker);
    drawErrors(s.counters);
    drawChannels(s.channels);
    drawClients(s.clients);
    drawConfig(s.config);
  }

  function updateSeries(s) {
    if (s.history) {
      series = s.history.slice();
    } else if (s.rate && (!series.length || series[series.length - 1][0] < s.rate[0])) {
      series.push(s.rate);
    }
    var since = s.t - SPAN;
    while (series.length && series[0][0] < since) { series.shift(); }
  }

  function niceMax(value) {
    if (value <= 1) { return 1; }
    var magnitude = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    for (var i = 0; i < steps.length; i++) {
      if (value <= steps[i] * magnitude) { return steps[i] * magnitude; }
    }
    return 10 * magnitude;
  }

  function drawChart() {
    var top = 0;
    series.forEach(function (p) { top = Math.max(top, p[1], p[2], p[3]); });
    var max = niceMax(top);
    var end = last ? last.t : 0;
    // A young server's chart spans what it has (30 s steps), up to SPAN.
    var age = series.length ? end - series[0][0] : 0;
    var span = Math.min(SPAN, Math.max(30, Math.ceil(age / 30) * 30));
    var label = span % 60 ? span + " s" : span / 60 + " min";
    setText("span", label);
    setText("x-start", label + " ago");
    var ids = ["line-in", "line-pub", "line-out"];
    ids.forEach(function (id, index) {
      var points = series.map(function (p) {
        var x = 600 - (end - p[0]) / span * 600;
        var y = 147 - p[index + 1] / max * 142;
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      $(id).setAttribute("points", points.join(" "));
    });
    setText("chart-max", fmt(max) + "/s");
    var latest = series.length ? series[series.length - 1] : [0, 0, 0, 0];
    setText("rate-in", fmt(latest[1]));
    setText("rate-pub", fmt(latest[2]));
    setText("rate-out", fmt(latest[3]));
  }

  // Rows keyed by an id, updated in place (a click on a row survives an update).
  function syncRows(tbody, items, key, cells) {
    var rows = new Map();
    Array.prototype.forEach.call(tbody.children, function (row) { rows.set(row.dataset.key, row); });
    items.forEach(function (item, index) {
      var id = key(item);
      var row = rows.get(id);
      var values = cells(item);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.key = id;
        values.forEach(function () { row.appendChild(document.createElement("td")); });
      }
      rows.delete(id);
      values.forEach(function (value, i) {
        var cell = row.children[i];
        if (value instanceof Node) {
          if (!cell.firstChild) { cell.appendChild(value); }
        } else if (cell.textContent !== String(value)) {
          cell.textContent = String(value);
        }
      });
      if (tbody.children[index] !== row) { tbody.insertBefore(row, tbody.children[index] || null); }
    });
    rows.forEach(function (row) { row.remove(); });
  }

  function drawConnections(connections) {
    setText("conn-total", fmt(connections.total));
    var transports = Object.keys(connections.by);
    var states = Object.keys(connections.by[transports[0]] || {});
    var rows = states.map(function (state) {
      var counts = transports.map(function (t) { return connections.by[t][state] || 0; });
      return { state: state, counts: counts };
    });
    syncRows($("connections").tBodies[0], rows, function (r) { return r.state; }, function (r) {
      var all = r.counts.reduce(function (a, b) { return a + b; }, 0);
      return [r.state.toLowerCase()].concat(r.counts.map(fmt), [fmt(all)]);
    });
  }

  function pairs(list, entries) {
    var children = [];
    entries.forEach(function (entry) {
      var dt = el("dt", entry[0]);
      var dd = el("dd", fmt(entry[1]), entry[2] || "");
      children.push(dt, dd);
    });
    var same = list.children.length === children.length && children.every(function (node, i) {
      return list.children[i].textContent === node.textContent &&
        list.children[i].className === node.className;
    });
    if (!same) { list.replaceChildren.apply(list, children); }
  }

  function drawBroker(broker) {
    setText("broker-kind", broker.kind);
    var entries = [["status", broker.healthy ? "up" : "unreachable", broker.healthy ? "good" : "bad"],
                   ["url", broker.url]];
    Object.keys(broker.stats).sort().forEach(function (name) {
      entries.push([name.replace(/_/g, " "), broker.stats[name]]);
    });
    pairs($("broker"), entries);
    var problems = $("problems");
    problems.hidden = !broker.problems.length;
    problems.textContent = broker.problems.join("; ");
    setText("node-total", fmt(broker.nodes.length));
    $("nodes-error").hidden = !broker.nodes_error;
    $("nodes-error").textContent = broker.nodes_error ? "survey failed: " + broker.nodes_error : "";
    syncRows($("nodes").tBodies[0], broker.nodes, function (n) { return n.uid; }, function (n) {
      return [(n.self ? "\u25cf " : "") + String(n.uid).slice(0, 8), n.version, fmt(n.num_clients),
              fmt(n.num_users), fmt(n.num_subs), fmt(n.num_channels), duration(n.uptime)];
    });
  }

  function sum(values) {
    return Object.keys(values || {}).reduce(function (total, k) { return total + values[k]; }, 0);
  }

  function breakdown(values) {
    var keys = Object.keys(values || {}).filter(function (k) { return values[k] > 0; }).sort();
    var total = sum(values);
    if (!keys.length) { return fmt(total); }
    return fmt(total) + " (" + keys.map(function (k) { return k + " " + fmt(values[k]); })
      .join(", ") + ")";
  }

  function drawErrors(c) {
    var drops = sum(c.slow_consumer_drops);
    var errors = (c.state_transitions || {}).ERROR || 0;
    pairs($("errors"), [
      ["slow-consumer drops", drops, drops ? "bad" : ""],
      ["connections ended in error", errors, errors ? "bad" : ""],
      ["invalid messages", breakdown(c.invalid_messages)],
      ["handshakes refused", breakdown(c.handshake_refusals)],
      ["rate limited", breakdown(c.rate_limited)],
      ["recovery gaps", breakdown(c.recovery_gaps)],
      ["admin refusals", breakdown(c.admin_refusals)],
      ["history dropped early", sum(c.history_dropped)],
      ["channel resyncs", sum(c.resyncs)]
    ]);
    var closes = c.closes || {};
    var codes = Object.keys(closes).filter(function (k) { return closes[k] > 0; }).sort();
    var tags = codes.map(function (code) {
      var tag = el("span", null, "tag");
      tag.appendChild(el("b", code));
      tag.appendChild(document.createTextNode(" \u00d7 " + fmt(closes[code])));
      return tag;
    });
    if (!tags.length) { tags = [el("span", "none yet", "muted")]; }
    var box = $("closes");
    if (box.textContent !== tags.map(function (t) { return t.textContent; }).join("")) {
      box.replaceChildren.apply(box, tags);
    }
  }

  function drawChannels(channels) {
    setText("chan-total", fmt(channels.total));
    syncRows($("channels").tBodies[0], channels.shown, function (c) { return c.name; },
      function (c) {
        return [c.name, fmt(c.subscribers), c.offset === null ? "-" : fmt(c.offset),
                c.epoch === null ? "-" : c.epoch];
      });
  }

  function pickButton() {
    var button = el("button", "pick", "small-button");
    button.type = "button";
    return button;
  }

  function drawClients(clients) {
    setText("client-total", fmt(clients.total));
    var tbody = $("clients").tBodies[0];
    syncRows(tbody, clients.shown, function (c) { return c.client_id; }, function (c) {
      var channels = c.channels.join(", ") +
        (c.channel_count > c.channels.length ? " +" + (c.channel_count - c.channels.length) : "");
      return [c.client_id, c.user || "(anonymous)", c.transport, c.state.toLowerCase(), c.peer,
              channels || "-", fmt(c.messages), pickButton()];
    });
    Array.prototype.forEach.call(tbody.rows, function (row) {
      var client = clients.shown.find(function (c) { return c.client_id === row.dataset.key; });
      if (client) {
        row.dataset.user = client.user;
        row.cells[0].title = client.client_id;
        row.cells[0].className = "id";
      }
    });
  }

  function flatten(prefix, value, out) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      Object.keys(value).forEach(function (k) {
        flatten(prefix ? prefix + "." + k : k, value[k], out);
      });
    } else {
      out.push([prefix, value]);
    }
    return out;
  }

  function drawConfig(config) {
    pairs($("config"), flatten("", config, []));
  }

  // -- actions, through the server API -------------------------------------------------

  async function callApi(method, body, output) {
    output.className = "result";
    output.textContent = "\u2026";
    try {
      var response = await fetch("api/" + method, {
        method: "POST", cache: "no-store", body: JSON.stringify(body),
        headers: keyHeaders({ "Content-Type": "application/json" })
      });
      var answer = await response.json();
      if (response.status === 401) {
        askKey("The server refused the key.");
      }
      if (answer.error) {
        output.className = "result error";
        output.textContent = "error " + answer.error.code + ": " + answer.error.message;
        return null;
      }
      return answer.result;
    } catch (error) {
      output.className = "result error";
      output.textContent = String(error);
      return null;
    }
  }

  $("publish-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    var output = $("pub-result");
    var data;
    try {
      data = JSON.parse($("pub-data").value);
    } catch (error) {
      output.className = "result error";
      output.textContent = "data is not JSON: " + error.message;
      return;
    }
    var channel = $("pub-channel").value.trim();
    var result = await callApi("publish", { channel: channel, data: data }, output);
    if (result) {
      output.className = "result good";
      output.textContent = "published on " + channel + " at offset " + result.offset;
    }
  });

  $("disconnect-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    var output = $("dis-result");
    var user = $("dis-user").value.trim();
    var client = $("dis-client").value.trim();
    if (!user && !client) {
      output.className = "result error";
      output.textContent = "give a user, a client id, or both";
      return;
    }
    if (!user && last) {  // an anonymous client, or a user not typed in: as the server knows it
      var known = last.clients.shown.find(function (c) { return c.client_id === client; });
      if (known) { user = known.user; }
    }
    var body = { user: user };
    if (client) { body.client = client; }
    var result = await callApi("disconnect", body, output);
    if (result) {
      output.className = "result good";
      output.textContent = "disconnected " + (client || "every connection of " + user);
    }
  });

  $("clients").addEventListener("click", function (event) {
    var button = event.target.closest("button");
    if (!button) { return; }
    var row = button.closest("tr");
    $("dis-client").value = row.dataset.key;
    $("dis-user").value = row.dataset.user || "";
    $("dis-result").textContent = "";
    $("disconnect-form").scrollIntoView({ block: "nearest" });
  });

  runFeed();
})();
