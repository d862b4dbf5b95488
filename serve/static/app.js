/* Battery fleet twin: what every page of the dashboard shares. Plain JS, no build step.
 *
 * One global, BMS, holds:
 *   BMS.el, BMS.$, BMS.table   build the DOM; an API value only ever becomes textContent
 *   BMS.fmt                    numbers, times, distances
 *   BMS.auth                   the token, kept in this tab's sessionStorage (never a URL)
 *   BMS.api                    fetch with the bearer token; a 401 signs the tab out
 *   BMS.EventStream            server-sent events over fetch(): EventSource cannot send an
 *                              Authorization header, so the stream is read and parsed here
 *   BMS.Poller                 a refresh every few seconds, never two at once
 *   BMS.views, BMS.shell       the views of each role and the #hash router that shows them
 *
 * The charts (charts.js), the map (map.js), the alert list (alerts.js) and one file per
 * view (fleet, battery, whatif, technician, customer, ops) add to BMS; app.js is loaded
 * first and starts the shell once the page has loaded.
 */
"use strict";

window.BMS = (() => {
  const TOKEN_KEY = "bms.token";

  // ---------------------------------------------------------------- DOM
  const $ = (id) => document.getElementById(id);

  /** el("td", {class: "num", text: 3}, child...): props are attributes, except `class`,
   *  `text` (textContent), `dataset` and `on<event>` handlers. Strings become text nodes. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  /** Fill `target` (a <table>) with a header and one row per item.
   *  columns: [{label, value: item => text | Node, num: bool}]. */
  function table(target, columns, items, empty = "Nothing to show.") {
    const head = el("thead", {}, el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null, text: c.label }))));
    const body = el("tbody");
    if (!items.length) {
      body.append(el("tr", {}, el("td", { class: "empty", colspan: columns.length, text: empty })));
    }
    for (const item of items) {
      body.append(el("tr", {}, columns.map((c) => {
        const v = c.value(item);
        return el("td", { class: c.num ? "num" : null }, v instanceof Node ? v : v === null || v === undefined ? "–" : String(v));
      })));
    }
    target.replaceChildren(head, body);
    return target;
  }

  /** A card: <section class="card"> with a head (title, subtitle, tools) and a body. */
  function card(title, { sub, tools, body, foot, id, bodyClass } = {}) {
    return el("section", { class: "card", id },
      el("div", { class: "card-head" }, el("h2", { text: title }), sub || null,
        tools ? el("div", { class: "tools" }, tools) : null),
      el("div", { class: "card-body " + (bodyClass || "") }, body || []),
      foot ? el("div", { class: "card-foot" }, foot) : null);
  }

  function chip(text, cls) {
    return el("span", { class: "chip " + (cls || ""), text });
  }

  function toast(message, isError = false) {
    let box = $("toasts");
    if (!box) { box = el("div", { id: "toasts" }); document.body.append(box); }
    const t = el("div", { class: "toast" + (isError ? " error" : ""), role: "status", text: message });
    box.append(t);
    setTimeout(() => t.remove(), isError ? 8000 : 4000);
  }

  // ---------------------------------------------------------------- formatting
  const known = (x) => x !== null && x !== undefined && Number.isFinite(Number(x));
  const fmt = {
    num: (x, digits = 1) => known(x) ? Number(x).toFixed(digits) : "–",
    int: (x) => known(x) ? Math.round(Number(x)).toLocaleString("en-US") : "–",
    pct: (x, digits = 0) => known(x) ? `${Number(x).toFixed(digits)} %` : "–",
    eur: (x) => known(x) ? `€${Number(x).toFixed(2)}` : "–",
    km: (m, digits = 1) => known(m) ? `${(Number(m) / 1000).toFixed(digits)} km` : "–",
    meters: (m) => !known(m) ? "–" : m < 1000 ? `${Math.round(m)} m` : `${(m / 1000).toFixed(1)} km`,
    time: (s) => known(s) ? new Date(s * 1000).toLocaleTimeString("en-GB") : "–",
    hm: (s) => known(s) ? new Date(s * 1000).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" }) : "–",
    dateTime: (s) => known(s) ? new Date(s * 1000).toLocaleString("en-GB", { day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit" }) : "–",
    ago(s, now = Date.now() / 1000) {
      if (!known(s)) return "–";
      const d = Math.max(0, now - s);
      if (d < 60) return `${Math.round(d)} s ago`;
      if (d < 3600) return `${Math.round(d / 60)} min ago`;
      if (d < 86400 * 2) return `${(d / 3600).toFixed(1)} h ago`;
      return `${Math.round(d / 86400)} d ago`;
    },
    duration(s) {
      if (!known(s)) return "–";
      if (s < 120) return `${Math.round(s)} s`;
      if (s < 7200) return `${Math.round(s / 60)} min`;
      return `${(s / 3600).toFixed(1)} h`;
    },
    label: (s) => s === null || s === undefined ? "–" : String(s).replaceAll("_", " "),
  };

  // ---------------------------------------------------------------- auth and API
  const auth = {
    token: () => sessionStorage.getItem(TOKEN_KEY),
    set: (token) => sessionStorage.setItem(TOKEN_KEY, token),
    clear: () => sessionStorage.removeItem(TOKEN_KEY),
  };

  class Unauthorized extends Error {}
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function detailOf(response) {
    const body = await response.json().catch(() => ({}));
    const d = body.detail;
    // 422s carry FastAPI's list of {loc, msg}; everything else a string.
    if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
    return d || response.statusText || `HTTP ${response.status}`;
  }

  /** Call the API as the signed-in token; JSON in and out. A 401 signs the tab out. */
  async function api(path, { method = "GET", body, signal } = {}) {
    const headers = { Authorization: "Bearer " + auth.token() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      const why = await detailOf(response);
      shell.signOut("Signed out: " + why);
      throw new Unauthorized(why);
    }
    if (!response.ok) throw new ApiError(response.status, `${method} ${path.split("?")[0]}: ${response.status} ${await detailOf(response)}`);
    return response.status === 204 ? null : response.json();
  }

  const query = (params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
    const s = q.toString();
    return s ? "?" + s : "";
  };

  // ---------------------------------------------------------------- live data
  /** Server-sent events read with fetch() and a ReadableStream, so the request carries the
   *  bearer token. Parses `id:`, `event:`, `data:` and `retry:` lines and `:` comments as the
   *  SSE format says; after a disconnect it reconnects and sends `Last-Event-ID`, so the
   *  server resumes after the last event seen and nothing is lost or repeated.
   *
   *  onEvent({type, id, data}) per event; onOpen() per connection (before its events);
   *  onState("live" | "reconnecting" | "closed"). */
  class EventStream {
    constructor(path, { onEvent, onOpen, onState } = {}) {
      this.path = path;
      this.onEvent = onEvent || (() => {});
      this.onOpen = onOpen || (() => {});
      this.onState = onState || (() => {});
      this.lastEventId = null;
      this.retryMs = 3000;
      this.controller = null;
      this.stopped = true;
      this.keepAlives = 0;
    }

    start() {
      if (!this.stopped) return;
      this.stopped = false;
      this.loop();
    }

    stop() {
      this.stopped = true;
      if (this.controller) this.controller.abort();
      this.onState("closed");
    }

    async loop() {
      let failures = 0;
      while (!this.stopped) {
        this.controller = new AbortController();
        try {
          const headers = { Authorization: "Bearer " + auth.token(), Accept: "text/event-stream" };
          if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
          const response = await fetch(this.path, { headers, signal: this.controller.signal, cache: "no-store" });
          if (response.status === 401) { shell.signOut("Signed out: " + await detailOf(response)); return; }
          if (response.status === 400 && this.lastEventId !== null) {
            // The server no longer knows our id (it restarted): start over from now.
            this.lastEventId = null;
            continue;
          }
          if (!response.ok || !response.body) throw new Error(`stream: HTTP ${response.status}`);
          failures = 0;
          this.onState("live");
          await this.onOpen();
          await this.read(response.body.getReader());
        } catch (err) {
          if (this.stopped) return;
          failures += 1;
        }
        if (this.stopped) return;
        this.onState("reconnecting");
        // The server's retry hint, backing off on repeated failures (at most a minute).
        await new Promise((r) => setTimeout(r, Math.min(60000, this.retryMs * 2 ** Math.min(failures, 4))));
      }
    }

    async read(reader) {
      const decoder = new TextDecoder();
      let buffer = "";
      let event = { type: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        // Lines end with \n, \r\n or \r; keep a trailing partial line for the next chunk.
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();
        for (const line of lines) {
          if (line === "") {
            if (event.id !== null) this.lastEventId = event.id;
            if (event.data.length) this.onEvent({ type: event.type, id: this.lastEventId, data: event.data.join("\n") });
            event = { type: "message", data: [], id: null };
            continue;
          }
          if (line.startsWith(":")) { this.keepAlives += 1; continue; }
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "data") event.data.push(val);
          else if (field === "event") event.type = val;
          else if (field === "id" && !val.includes("\0")) event.id = val;
          else if (field === "retry" && /^\d+$/.test(val)) this.retryMs = Number(val);
        }
      }
    }
  }

  /** Runs `fn` now and then every `intervalMs` after it finished (never two at once);
   *  failures go to the status light, a sign-out stops it. */
  class Poller {
    constructor(name, fn, intervalMs) {
      this.name = name; this.fn = fn; this.intervalMs = intervalMs;
      this.timer = null; this.stopped = true; this.running = null;
    }
    start() { this.stopped = false; this.tick(); return this; }
    stop() { this.stopped = true; clearTimeout(this.timer); }
    now() { clearTimeout(this.timer); if (!this.running) this.tick(); }
    async tick() {
      if (this.stopped) return;
      this.running = (async () => {
        // A view that was left while its refresh ran says nothing about the one shown now.
        try { await this.fn(); if (!this.stopped) status.ok(this.name); }
        catch (err) { if (!this.stopped && !(err instanceof Unauthorized)) status.fail(this.name, err); }
      })();
      await this.running;
      this.running = null;
      if (!this.stopped) this.timer = setTimeout(() => this.tick(), this.intervalMs);
    }
  }

  /** The light in the top bar: green while every refresh succeeds, red with the reason. */
  const status = {
    failing: new Map(),
    ok(name) { this.failing.delete(name); this.render(); },
    fail(name, err) { this.failing.set(name, err.message || String(err)); this.render(); },
    reset() { this.failing.clear(); this.render(); },
    render() {
      const light = $("live");
      if (!light) return;
      const [first] = this.failing.values();
      light.className = "live " + (first ? "down" : "ok");
      light.title = first || "Every view refreshed";
      $("live-text").textContent = first ? "refresh failed" : "live";
    },
  };

  // ---------------------------------------------------------------- views and shell
  /** name -> {title, roles, nav, mount(main, param) -> {unmount()}} */
  const views = new Map();
  const DEFAULT_VIEW = { fleet_manager: "fleet", technician: "route", customer: "near", ops: "ops" };

  const shell = {
    me: null,
    current: null,

    register(name, view) { views.set(name, view); },

    async signIn() {
      let me;
      try { me = await api("api/v1/me"); }
      catch (err) {
        if (!(err instanceof Unauthorized)) this.signOut("Cannot reach the API: " + err.message);
        return;
      }
      this.me = me;
      $("login-wrap").hidden = true;
      $("topbar-user").hidden = false;
      $("who-text").textContent = `${me.subject} · ${fmt.label(me.role)}`;
      const nav = $("nav");
      nav.replaceChildren(...[...views].filter(([, v]) => v.nav && v.roles.includes(me.role))
        .map(([name, v]) => el("a", { href: "#" + name, dataset: { view: name }, text: v.title })));
      $("search").hidden = !views.get("battery").roles.includes(me.role);
      this.route();
    },

    signOut(message) {
      auth.clear();
      this.me = null;
      this.unmount();
      status.reset();
      $("topbar-user").hidden = true;
      $("search").hidden = true;
      $("nav").replaceChildren();
      $("view").replaceChildren();
      $("login-wrap").hidden = false;
      $("login-error").textContent = message || "";
    },

    unmount() {
      if (this.current) { this.current.unmount(); this.current = null; }
    },

    /** Show the view the #hash names (e.g. #battery/b-00042), if the role may see it. */
    route() {
      if (!this.me) return;
      const [name, ...rest] = location.hash.replace(/^#/, "").split("/");
      const param = rest.length ? decodeURIComponent(rest.join("/")) : null;
      let view = views.get(name);
      if (!view || !view.roles.includes(this.me.role)) {
        const fallback = DEFAULT_VIEW[this.me.role];
        if (name !== fallback) { history.replaceState(null, "", "#" + fallback); }
        view = views.get(fallback);
      }
      this.unmount();
      status.reset();
      for (const a of $("nav").children) a.classList.toggle("active", a.dataset.view === (views.get(name) === view ? name : DEFAULT_VIEW[this.me.role]));
      const main = $("view");
      main.replaceChildren();
      window.scrollTo(0, 0);
      this.current = view.mount(main, param, this.me);
    },
  };

  function start() {
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      auth.set($("token").value.trim());
      $("token").value = "";
      shell.signIn();
    });
    $("logout").addEventListener("click", () => shell.signOut());
    $("search").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = $("search-id").value.trim();
      if (id) location.hash = "#battery/" + encodeURIComponent(id);
    });
    window.addEventListener("hashchange", () => shell.route());
    if (auth.token()) shell.signIn();
    else shell.signOut();
  }

  document.addEventListener("DOMContentLoaded", start);

  return {
    $, el, table, card, chip, toast, fmt, known, auth, api, query, Unauthorized, ApiError,
    EventStream, Poller, status, shell, views,
  };
})();
