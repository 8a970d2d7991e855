"use strict";
// The llm-router status page: polls GET /admin/status every 2 s with the admin key the
// user typed (kept in sessionStorage only, gone when the tab closes) and redraws.
// Every value is put in the page as text (textContent), never as markup: config errors
// and names come from files an admin edits, but the page should not trust them either.
(function () {
  const KEY = "llm-router-admin-key";
  const REFRESH_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const SERIES = 6; // colour classes c0..c5 in the stylesheet
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let lastOk = null;

  // -- tiny DOM builders
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const kid of kids.flat(Infinity)) if (kid) el.append(kid);
    return el;
  }
  function dl(pairs) {
    return h("dl", null, pairs.filter(Boolean).map(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
  }
  const color = (i) => "c" + (i % SERIES);

  // -- units
  function num(n, digits) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 0 : digits });
  }
  function tokens(n) {
    if (n >= 1e9) return num(n / 1e9, 2) + " G tok";
    if (n >= 1e6) return num(n / 1e6, 2) + " M tok";
    if (n >= 1e4) return num(n / 1e3, 1) + " k tok";
    return num(n) + " tok";
  }
  function usd(v) {
    if (v === null || v === undefined) return "–";
    if (v === 0) return "$0";
    if (Math.abs(v) >= 1) return "$" + Number(v).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    return "$" + Number(v.toPrecision(3)).toString();
  }
  function ms(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 10000) return num(v / 1000, 1) + " s";
    return num(v, v < 10 ? 2 : 0) + " ms";
  }
  function duration(sec) {
    if (sec === null || sec === undefined) return "–";
    sec = Math.max(0, Math.round(sec));
    if (sec < 60) return sec + " s";
    if (sec < 3600) return Math.floor(sec / 60) + " min " + (sec % 60) + " s";
    if (sec < 86400) return Math.floor(sec / 3600) + " h " + Math.floor((sec % 3600) / 60) + " min";
    return Math.floor(sec / 86400) + " d " + Math.floor((sec % 86400) / 3600) + " h";
  }
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    const ago = (Date.now() - d.getTime()) / 1000;
    const rel = ago >= 0 ? duration(ago) + " ago" : "in " + duration(-ago);
    return d.toLocaleString() + " (" + rel + ")";
  }
  const plural = (n, word) => num(n) + " " + word + (n === 1 ? "" : "s");
  const pct = (x) => (x === null || x === undefined ? "–" : num(x * 100, 1) + " %");
  const STATE_TEXT = { ok: "ok", cooldown: "cooldown", open: "open", half_open: "half-open", bad: "bad key" };

  // -- login and refusal
  function showLogin(message) {
    stop();
    $("status").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    const r = $("refusal");
    r.hidden = !message;
    r.textContent = message || "";
    $("key").value = "";
    $("key").focus();
  }
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    start();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin("");
  });

  function start() {
    $("login").hidden = true;
    $("forget").hidden = false;
    poll();
  }
  function stop() {
    if (timer) clearTimeout(timer);
    timer = null;
  }

  async function poll() {
    stop();
    const key = sessionStorage.getItem(KEY);
    if (!key) { showLogin(""); return; }
    let resp;
    try {
      // X-Router-Status-Poll: the router logs this page's own polling at DEBUG, untraced.
      resp = await fetch("/admin/status", { headers: { Authorization: "Bearer " + key, "X-Router-Status-Poll": "1" }, cache: "no-store" });
    } catch (err) {
      if (sessionStorage.getItem(KEY) === key) unreachable("the router did not answer (" + err.message + ")");
      return;
    }
    if (sessionStorage.getItem(KEY) !== key) return; // forgotten or replaced meanwhile
    if (resp.status === 401 || resp.status === 403) {
      let detail = "";
      try { detail = (await resp.json()).error.message; } catch (e) { detail = ""; }
      sessionStorage.removeItem(KEY);
      showLogin(resp.status === 401
        ? "Refused: the router does not know that key (401). " + detail
        : "Refused: that key is not an admin key (403). " + detail);
      return;
    }
    if (!resp.ok) {
      unreachable("the router answered " + resp.status);
      return;
    }
    let data;
    try { data = await resp.json(); } catch (e) { unreachable("unreadable answer"); return; }
    lastOk = new Date();
    $("banner").hidden = true;
    $("status").hidden = false;
    render(data);
    $("live").textContent = "updated " + lastOk.toLocaleTimeString() + " · every " + REFRESH_MS / 1000 + " s";
    timer = setTimeout(poll, REFRESH_MS);
  }
  function unreachable(why) {
    const b = $("banner");
    b.hidden = false;
    b.textContent = "Cannot refresh: " + why + ". Retrying every " + REFRESH_MS / 1000 + " s" +
      (lastOk ? "; the figures below are from " + lastOk.toLocaleTimeString() + "." : ".");
    timer = setTimeout(poll, REFRESH_MS);
  }

  // -- rendering
  function render(d) {
    $("version").textContent = "v" + d.router.version;
    renderRouter(d.router);
    if (d.cache && d.cache.enabled) {  // the response cache (docs/cache.md): this process's lookups
      $("tiles").append(tile("cache hit rate · " + plural(d.cache.hits, "hit") + ", $" +
        num(d.cache.saved_usd, 4) + " saved", d.cache.hit_rate === null ? "–" :
        num(d.cache.hit_rate * 100, 1) + " %", "cache"));
    }
    renderConfig(d.config);
    $("providers").replaceChildren(...d.providers.map(renderProvider));
    $("groups").replaceChildren(...d.groups.map(renderGroup));
    $("users").replaceChildren(...(d.users.length ? d.users.map(renderUser)
      : [h("p", { class: "muted" }, "No users in the config (the legacy api_key, if any, is the only caller).")]));
  }

  function tile(label, value, field) {
    return h("div", { class: "tile", "data-field": field }, h("div", { class: "v" }, value), h("div", { class: "l" }, label));
  }
  function renderRouter(r) {
    // With a shared state store, "fleet" adds up every router process that shares it.
    const t = r.fleet || r;
    const scope = r.fleet ? " · fleet" : "";
    $("tiles").replaceChildren(
      tile("requests / s (last " + t.window_s + " s)" + scope, num(t.requests_per_s, 2) + " req/s", "rps"),
      tile("p50 latency" + scope, ms(t.latency_ms.p50), "p50"),
      tile("p95 latency" + scope, ms(t.latency_ms.p95), "p95"),
      tile("errors / s (status ≥ 400)" + scope, num(t.errors_per_s, 2) + " err/s", "eps"),
      tile("in flight" + scope, num(t.inflight) + " req", "inflight"),
      ...(r.fleet ? [tile("router processes", num(r.fleet.processes), "processes")] : []),
      tile("uptime" + (r.draining ? " · draining" : ""), duration(r.uptime_s), "uptime"));
    $("traffic").replaceChildren(trafficChart(t.per_second));
    const peak = Math.max(0, ...t.per_second.requests);
    $("traffic-caption").textContent = "Requests per second over the last 60 s, errors in red (peak " +
      num(peak) + " req/s): " + plural(t.requests, "request") + ", " + plural(t.errors, "error") + ". " +
      (r.fleet ? "Figures of the whole fleet: " + num(r.fleet.processes) + (r.fleet.processes === 1 ? " router process" : " router processes") + " sharing the state store."
        : "Figures of this router process.");
  }
  function trafficChart(perSecond) {
    const series = perSecond.requests.map((r, i) => ({ requests: r, errors: perSecond.errors[i] }));
    const W = 600, H = 80, n = series.length || 60, bw = W / n;
    const peak = Math.max(1, ...series.map((x) => x.requests));
    const bars = [];
    series.forEach((x, i) => {
      const hr = (x.requests / peak) * (H - 12), he = (x.errors / peak) * (H - 12);
      if (hr > 0) bars.push(s("rect", { class: "bar", x: i * bw + 1, y: H - hr, width: Math.max(1, bw - 2), height: hr }));
      if (he > 0) bars.push(s("rect", { class: "err", x: i * bw + 1, y: H - he, width: Math.max(1, bw - 2), height: he }));
    });
    const title = s("title");
    title.textContent = "requests per second, last 60 s";
    return s("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img", "aria-label": "traffic, last minute" },
      title, s("line", { class: "base", x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5 }), bars);
  }

  function renderConfig(c) {
    const last = c.last_reload;
    const kids = [dl([
      ["file", h("span", { class: "mono" }, c.path || "(not from a file)")],
      ["loaded", when(c.loaded_at)],
      ["serving", c.summary],
      c.state ? ["state", c.state.backend + (c.state.backend === "memory" ? " (this process)" : c.state.up ? " (up, shared)" : " (unreachable: limits are per process until it is back)")] : null,
      ["last reload", last
        ? h("span", { "data-field": "last-reload", "data-result": last.result },
          h("span", { class: "pill " + last.result }, last.result), " ", when(last.at), " · ", last.reason)
        : h("span", { "data-field": "last-reload", "data-result": "none" }, c.watched ? "none since start (the file is watched)" : "not watched")],
    ])];
    if (last && last.result === "refused") {
      kids.push(h("p", { class: "why" }, "The edit was refused; the previous config keeps serving. Its problems:"));
      kids.push(h("ul", { class: "errors", "data-field": "reload-errors" }, last.errors.map((e) => h("li", null, e))));
    }
    $("config").replaceChildren(h("div", { class: "card" + (last && last.result === "refused" ? " key bad" : "") }, kids));
  }

  function renderProvider(p) {
    return h("div", { class: "provider", "data-provider": p.name },
      h("h3", null, p.name, " ", h("span", { class: "muted" }, p.type + " · " + p.keys.length + (p.keys.length === 1 ? " key" : " keys"))),
      h("div", { class: "cards" }, p.keys.map((k) => renderKey(p, k))));
  }
  function renderKey(p, k) {
    const state = h("span", { class: "pill " + k.state, "data-field": "state" }, STATE_TEXT[k.state] || k.state);
    const left = k.seconds_left !== null ? " · " + duration(k.seconds_left) + " left" : "";
    const hr = k.ratelimit_remaining || {};
    const headroom = Object.keys(hr).length
      ? [hr.requests !== undefined ? num(hr.requests) + " req" : null, hr.tokens !== undefined ? tokens(hr.tokens) : null].filter(Boolean).join(" · ")
      : "not reported";
    const models = Object.entries(k.tokens);
    return h("div", { class: "card key " + k.state, "data-provider": p.name, "data-key": k.key, "data-state": k.state },
      h("h3", null, h("span", { class: "mono" }, k.key), " ", state, h("span", { class: "muted" }, left)),
      k.reason ? h("p", { class: "why", "data-field": "reason" }, k.reason) : null,
      dl([
        ["last 5 min", plural(k.requests_5m, "attempt") + " · " + plural(k.errors_5m, "error")],
        ["rate-limit left", headroom],
        ["today", num(k.requests_today) + (k.daily_request_limit ? " / " + num(k.daily_request_limit) : "") + " req"],
        k.last_error ? ["last error", k.last_error.reason + " · " + when(k.last_error.at)] : null,
        ["tokens", models.length ? h("span", null, models.map(([m, n], i) => [i ? h("br") : null, m + ": " + tokens(n)])) : "none yet"],
      ]));
  }

  function shareBar(parts, title) {
    // One stacked bar: each member's part of the whole, in its series colour.
    const W = 300, H = 14;
    let x = 0;
    const rects = parts.map((v, i) => {
      const w = (v || 0) * W;
      const r = s("rect", { class: color(i), x: x, y: 0, width: Math.max(0, w), height: H });
      x += w;
      return r;
    });
    const t = s("title");
    t.textContent = title;
    return s("svg", { class: "sharebar", viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img", "aria-label": title },
      t, s("rect", { class: "track", x: 0, y: 0, width: W, height: H }), rects);
  }
  function memberBar(share, target, i) {
    // The member's actual share (bar) against its target from the weights (tick).
    const W = 100, H = 12;
    const kids = [s("rect", { class: "track", x: 0, y: 2, width: W, height: H - 4 }),
      s("rect", { class: color(i), x: 0, y: 2, width: (share || 0) * W, height: H - 4 })];
    if (target !== null && target !== undefined) {
      kids.push(s("line", { class: "target", x1: target * W, y1: 0, x2: target * W, y2: H }));
    }
    return s("svg", { class: "sharebar", viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img",
      "aria-label": "share " + pct(share) + (target !== null ? ", target " + pct(target) : "") }, kids);
  }
  function accepts(m) {
    // What the member takes (capabilities: unset = anything) and its context window.
    if (m.capabilities === null && m.context_window === null) return null;
    // Where a value came from, when not declared: the provider's model list, or a
    // context-length error.
    const from = (src) => (src && src !== "declared" ? " (" + src + ")" : "");
    const caps = m.capabilities === null ? "any input"
      : (m.capabilities.join(", ") || "text only") + from(m.capabilities_from);
    const win = m.context_window === null ? ""
      : " · " + tokens(m.context_window) + " window" + from(m.context_window_from);
    return h("span", { class: "muted accepts" }, " " + caps + win);
  }
  function renderGroup(g) {
    const hasTarget = g.members.some((m) => m.target_share !== null);
    // data-label names each cell's column: on a narrow screen the table stacks, one
    // member per block and one "column: value" line per cell (status.css).
    const cols = ["member", "weight", "tokens", "share", "target", "share vs target"];
    const cell = (i, cls, ...kids) => h("td", { class: cls, "data-label": cols[i] }, ...kids);
    const rows = g.members.map((m, i) => h("tr", { "data-member": m.provider + "/" + m.model },
      cell(0, null, h("span", null, h("span", { class: "legend-dot " + color(i) }), m.provider + "/" + m.model),
        accepts(m)),
      cell(1, "n", num(m.weight, 3)),
      cell(2, "n", tokens(m.tokens)),
      cell(3, "n", pct(m.share)),
      cell(4, "n", hasTarget ? pct(m.target_share) : "–"),
      cell(5, "bar", memberBar(m.share, m.target_share, i))));
    const card = h("div", { class: "card", "data-group": g.name },
      h("h3", null, g.name, " ", h("span", { class: "muted" }, g.strategy + " · " + tokens(g.tokens))),
      g.tokens ? shareBar(g.members.map((m) => m.share), "token share by member") : h("p", { class: "why" }, "No tokens served yet."),
      h("div", { class: "scroll" }, h("table", { class: "stack" },
        h("thead", null, h("tr", null, cols.map((c, i) => h("th", { class: i > 0 && i < 5 ? "n" : null }, c)))),
        h("tbody", null, rows))),
      h("p", { class: "why" }, hasTarget
        ? "Target: what inverse weight settles at (keys ÷ weight). Share counts the selection counters, which persist across restarts."
        : "This strategy does not split by weight: no target share."));
    return card;
  }

  function meter(used, limit) {
    const frac = limit > 0 ? Math.min(1, used / limit) : 0;
    const bar = h("span");
    bar.style.width = (frac * 100).toFixed(1) + "%";
    return h("div", { class: "meter" + (frac >= 1 ? " full" : frac >= 0.8 ? " high" : "") }, bar);
  }
  function limitRows(limits) {
    const names = { rpm: "req/min", tpm: "tok/min", daily_requests: "req/day", max_concurrent: "concurrent" };
    return Object.entries(limits).map(([name, l]) => [name,
      h("span", { "data-limit": name }, num(l.used) + " of " + num(l.limit) + " " + names[name] + " · " + num(l.remaining) + " left")]);
  }
  function renderUser(u) {
    const b = u.budget;
    const budget = b ? [
      ["budget", h("span", { "data-field": "budget" }, usd(b.spent_usd) + " of " + usd(b.usd) + " " + b.period + " · " + usd(b.remaining_usd) + " left" +
        (b.in_flight_usd ? " · " + usd(b.in_flight_usd) + " reserved in flight" : ""))],
      ["", meter(b.spent_usd, b.usd)],
      ["resets", b.resets_at ? when(b.resets_at) : "never (total)"],
    ] : [["budget", "none"]];
    const keys = u.keys.filter((k) => k.budget || Object.keys(k.limits).length);
    return h("div", { class: "card" + (b && b.exhausted ? " key bad" : ""), "data-user": u.name },
      h("h3", null, u.name, " ", h("span", { class: "muted" }, [u.role, u.configured ? null : "not a configured user"].filter(Boolean).join(" · "))),
      dl([
        ["spend today", h("span", { "data-field": "spend-today" }, usd(u.today.cost_usd) + " · " + num(u.today.requests) + " req · " + tokens(u.today.tokens))],
        ["this month", h("span", { "data-field": "spend-month" }, usd(u.month.cost_usd) + " · " + num(u.month.requests) + " req")],
        ...budget,
        ...limitRows(u.limits),
        ["in flight", num(u.concurrent) + " req"],
        ...keys.map((k) => ["key " + k.name, (k.budget ? usd(k.budget.spent_usd) + " of " + usd(k.budget.usd) + " " + k.budget.period : "")
          + limitRows(k.limits).map(([n, el]) => " · " + n + " " + el.textContent).join("")]),
      ]));
  }

  if (sessionStorage.getItem(KEY)) start(); else showLogin("");
})();
