"use strict";
// Helpers that tests/test_e2e_browser.py calls through Playwright's evaluate().
// Loaded by index.html and by the sandboxed (origin "null") iframes it makes,
// so the same calls work in both. Every wait is bounded: it rejects with an
// Error naming what it waited for.
(() => {
  const sockets = [];

  function log(...parts) {
    const line = parts.map(p => (typeof p === "string" ? p : JSON.stringify(p))).join(" ");
    const pre = document.getElementById("log");
    if (pre) pre.textContent += line + "\n";
  }

  function within(ms, what, executor) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
      executor(
        value => { clearTimeout(timer); resolve(value); },
        error => { clearTimeout(timer); reject(error); },
      );
    });
  }

  // One WebSocket and everything that happened to it, in order.
  function track(url) {
    const entry = { url, ws: new WebSocket(url), messages: [], waiters: [], opened: false,
                    error: false, close: null };
    const wake = () => { for (const w of entry.waiters.splice(0)) w(); };
    entry.ws.onopen = () => { entry.opened = true; log("open", url); wake(); };
    entry.ws.onmessage = e => { entry.messages.push(e.data); log("message", url, e.data); wake(); };
    entry.ws.onerror = () => { entry.error = true; log("error", url); wake(); };
    entry.ws.onclose = e => {
      entry.close = { code: e.code, reason: e.reason, wasClean: e.wasClean };
      log("close", url, entry.close);
      wake();
    };
    sockets.push(entry);
    return sockets.length - 1;
  }

  function until(entry, ms, what, ready) {
    return within(ms, what, (resolve, reject) => {
      const check = () => {
        let value;
        try { value = ready(); } catch (e) { reject(e); return; }
        if (value !== undefined) resolve(value); else entry.waiters.push(check);
      };
      check();
    });
  }

  const harness = {
    origin: () => self.origin,

    // Opens a socket; resolves with {id, opened, close}: opened, or closed before opening.
    connect(url, ms = 5000) {
      const id = track(url);
      const entry = sockets[id];
      return until(entry, ms, `open or close of ${url}`, () => {
        if (entry.opened || entry.close) return { id, opened: entry.opened, close: entry.close };
        return undefined;
      });
    },

    send(id, text) { sockets[id].ws.send(text); },

    // The next message not yet taken (in arrival order).
    next(id, ms = 5000) {
      const entry = sockets[id];
      return until(entry, ms, `a message on ${entry.url}`, () => {
        if (entry.messages.length) return entry.messages.shift();
        if (entry.close) throw new Error(`closed before a message: ${JSON.stringify(entry.close)}`);
        return undefined;
      });
    },

    // UTF-8 bytes of the next message, as a list of numbers.
    async nextBytes(id, ms = 5000) {
      return Array.from(new TextEncoder().encode(await harness.next(id, ms)));
    },

    // {code, reason, wasClean} of the close event, and what arrived before it.
    closed(id, ms = 5000) {
      const entry = sockets[id];
      return until(entry, ms, `close of ${entry.url}`,
                   () => (entry.close ? { ...entry.close, messages: entry.messages } : undefined));
    },

    close(id) { sockets[id].ws.close(1000, "bye"); },

    // An iframe whose document has origin "null" (sandboxed without allow-same-origin),
    // loading this harness too; resolves once it is loaded.
    nullOriginFrame(name, ms = 5000) {
      const frame = document.createElement("iframe");
      frame.name = name;
      // allow-forms: the CSRF test posts a form from it; no allow-same-origin: origin "null".
      frame.sandbox = "allow-scripts allow-forms";
      frame.srcdoc = '<!doctype html><meta charset="utf-8"><script src="harness.js"></scr' +
                     'ipt><p>sandboxed frame, origin <b>null</b></p><pre id="log"></pre>';
      return within(ms, `iframe ${name} to load`, resolve => {
        frame.onload = () => resolve(name);
        document.body.appendChild(frame);
      });
    },

    // fetch() as any page may do it without asking CORS: no-cors, a "simple" content
    // type, so no preflight. Resolves with the response's type ("opaque" when an HTTP
    // answer came back, whatever its status) or "error: ..." when none did.
    postNoCors(url, body, ms = 5000) {
      const request = fetch(url, { method: "POST", mode: "no-cors",
                                   headers: { "content-type": "text/plain" }, body });
      return within(ms, `POST ${url}`, resolve => {
        request.then(r => resolve(r.type), e => resolve(`error: ${e}`));
      });
    },

    // The classic CSRF form: a POST with enctype text/plain and one field, named
    // `json` less its closing `"}` and valued `"}`, so the body "name=value" is `json`
    // with "=" in its last string. The answer loads in a hidden iframe; resolves when
    // it has loaded.
    postForm(url, json, ms = 5000) {
      if (!json.endsWith('"}')) throw new Error("postForm needs JSON ending with a string");
      const name = "csrf" + Math.random().toString(36).slice(2);
      const target = document.createElement("iframe");
      target.name = name;
      target.style.display = "none";
      const form = document.createElement("form");
      Object.assign(form, { method: "POST", action: url, target: name, enctype: "text/plain" });
      const field = document.createElement("input");
      Object.assign(field, { type: "hidden", name: json.slice(0, -2), value: '"}' });
      form.appendChild(field);
      // The empty iframe fires a load event of its own when inserted: wait for the
      // answer's, after the submission.
      document.body.append(target, form);
      return within(ms, `form POST to ${url}`, resolve => {
        setTimeout(() => {
          target.onload = () => resolve("loaded");
          form.submit();
        }, 0);
      });
    },

    log,
  };
  self.harness = harness;
})();
