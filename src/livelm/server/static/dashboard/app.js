// livelm dashboard: polls the server's own API every 2 s and draws what it answers.
// Hand-written, no libraries; every request goes to this page's own origin (its Content
// Security Policy allows no other). Text from the server is set as text, never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const KEY_STORE = "livelm.apiKey"; // sessionStorage: this tab only, gone when it closes
  const LIMITS = { timeline: 500, surprises: 8, terms: 12 };
  const ANSWER_TOKENS = 32;
  const SVG = "http://www.w3.org/2000/svg";

  let key = sessionStorage.getItem(KEY_STORE) || "";
  let servedName = null;
  let liveVersion = null;
  let timer = null;
  let running = false;
  let again = false;
  // What each panel last drew: a panel whose data did not change is left alone, so a row or a
  // button stays the same element between polls (no flicker, no click lost to a redraw).
  const drawn = new Map();

  function changed(panel, data) {
    const signature = JSON.stringify(data);
    if (drawn.get(panel) === signature) return false;
    drawn.set(panel, signature);
    return true;
  }

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One API call: the key goes in the Authorization header (never in an address).
  async function api(method, path, body) {
    const headers = {};
    if (key) headers.Authorization = "Bearer " + key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (e) {
      throw new ApiError(0, "the server does not answer");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const message = data && data.error && data.error.message;
      throw new ApiError(response.status, message || `HTTP ${response.status}`);
    }
    return { data, headers: response.headers };
  }

  // ---------- formatting ----------

  function num(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
  }

  function count(x) {
    return typeof x === "number" && isFinite(x) ? Math.round(x).toLocaleString("en") : "–";
  }

  function duration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "–";
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  }

  // A time as seconds since the epoch: numbers are seconds (or milliseconds), strings ISO.
  function seconds(at) {
    if (typeof at === "number" && isFinite(at)) return at > 1e11 ? at / 1000 : at;
    if (typeof at === "string" && at) {
      const t = Date.parse(at);
      return isNaN(t) ? null : t / 1000;
    }
    return null;
  }

  function clock(s) {
    const d = new Date(s * 1000);
    return d.toLocaleTimeString("en-GB", { hour12: false });
  }

  function shortText(text, n) {
    const s = String(text == null ? "" : text).replace(/\s+/g, " ").trim();
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function show(id, text) {
    const el = $(id);
    el.textContent = text || "";
    el.hidden = !text;
  }

  // ---------- locked / unlocked ----------

  function lock(message) {
    $("board").hidden = true;
    $("live").hidden = true;
    $("locked").hidden = false;
    $("locked-message").textContent = message;
    // Nothing read with a key stays on the page once it is gone.
    for (const id of ["surprises", "terms", "versions"]) $(id).tBodies[0].replaceChildren();
    $("loss-chart").replaceChildren();
    $("answer-live").textContent = "";
    $("answer-prev").textContent = "";
    drawn.clear();
    lastTimeline = null;
    liveVersion = null;
  }

  function unlock() {
    $("locked").hidden = true;
    $("board").hidden = false;
    $("live").hidden = false;
  }

  // ---------- polling ----------

  async function optional(path) {
    try {
      return { ok: true, data: (await api("GET", path)).data };
    } catch (e) {
      if (e.status === 401) throw e;
      return { ok: false, error: e };
    }
  }

  async function refresh() {
    let snapshots;
    try {
      snapshots = (await api("GET", "/v1/snapshots")).data;
    } catch (e) {
      if (e.status === 401) {
        lock(
          key
            ? `The key was refused (401): ${e.message}. Type another key above.`
            : "This server needs an API key to show its data (401). Type a read key above " +
                "(a write key may also roll back and pin versions)."
        );
        $("connection").textContent = "needs a key";
        return;
      }
      $("connection").textContent = `server not answering (${e.message}); retrying`;
      return;
    }
    let parts;
    try {
      parts = await Promise.all([
        optional("/v1/monitor/stats"),
        optional(`/v1/monitor/timeline?limit=${LIMITS.timeline}`),
        optional(`/v1/monitor/surprises?limit=${LIMITS.surprises}`),
        optional(`/v1/monitor/terms?limit=${LIMITS.terms}`),
        servedName ? Promise.resolve(null) : optional("/v1/models"),
      ]);
    } catch (e) {
      lock(`The key was refused (401): ${e.message}. Type another key above.`);
      return;
    }
    const [stats, timeline, surprises, terms, models] = parts;
    if (models && models.ok) servedName = models.data.data[0].id;
    unlock();
    renderStats(stats, snapshots);
    renderVersions(snapshots);
    renderChart(timeline);
    renderSurprises(surprises);
    renderTerms(terms);
    $("connection").textContent = `updated ${clock(Date.now() / 1000)}`;
  }

  async function tick() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    clearTimeout(timer);
    try {
      await refresh();
    } catch (e) {
      $("connection").textContent = `dashboard error: ${e.message}`;
    } finally {
      running = false;
      timer = setTimeout(tick, again ? 0 : POLL_MS);
      again = false;
    }
  }

  // ---------- panels ----------

  function renderStats(stats, snapshots) {
    const s = stats.ok ? stats.data : {};
    liveVersion = s.live_version != null ? s.live_version : snapshots.live;
    let age = s.live_age_s;
    if (age == null) {
      const live = snapshots.snapshots.find((v) => v.live);
      const created = live ? seconds(live.created) : null;
      age = created == null ? null : Math.max(0, Date.now() / 1000 - created);
    }
    $("live-version").textContent = `v${liveVersion}`;
    $("stat-version").textContent = `v${liveVersion}`;
    $("live-age").textContent = duration(age);
    $("stat-age").textContent = duration(age);
    $("stat-queue").textContent = count(s.queue_depth);
    $("stat-docs").textContent = num(s.docs_per_s, 2);
    $("stat-tokens").textContent = num(s.tokens_per_s, 0);
    $("stat-learned").textContent = count(s.learned_docs);
    $("stat-learning").textContent = s.learning == null ? "–" : s.learning ? "learning" : "idle";
    $("stat-drift").textContent = count(s.drift_events);
    show("trouble", s.trouble ? `The learner is not ready: ${s.trouble}` : "");
  }

  function renderVersions(snapshots) {
    if (!changed("versions", snapshots)) return;
    const body = $("versions").tBodies[0];
    const rows = [];
    for (const v of snapshots.snapshots) {
      const tr = document.createElement("tr");
      tr.id = `version-${v.version}`;
      if (v.live) tr.className = "live-row";
      cell(tr, `v${v.version}`);
      cell(tr, v.parent == null ? "–" : `v${v.parent}`);
      const created = seconds(v.created);
      cell(tr, created == null ? String(v.created) : new Date(created * 1000).toLocaleString("en-GB"));
      cell(tr, count(v.documents));
      cell(tr, num(v.metrics && v.metrics.stream_loss, 3));
      cell(tr, num(v.metrics && v.metrics.canary_loss, 3));
      cell(tr, [v.live ? "live" : "", v.pinned ? "pinned" : ""].filter(Boolean).join(", ") || "–");
      const actions = cell(tr, "");
      const back = document.createElement("button");
      back.type = "button";
      back.id = `rollback-${v.version}`;
      back.textContent = "roll back";
      back.disabled = v.live;
      back.title = v.live ? "already live" : `make v${v.version} live`;
      back.addEventListener("click", () => act("POST", `/v1/snapshots/${v.version}/rollback`, `v${v.version} is live`));
      const pin = document.createElement("button");
      pin.type = "button";
      pin.id = `pin-${v.version}`;
      pin.textContent = v.pinned ? "unpin" : "pin";
      pin.title = v.pinned ? "let retention delete it again" : "keep it whatever the retention";
      pin.addEventListener("click", () =>
        act(v.pinned ? "DELETE" : "PUT", `/v1/snapshots/${v.version}/pin`, `v${v.version} ${v.pinned ? "unpinned" : "pinned"}`)
      );
      actions.append(back, pin);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  async function act(method, path, done) {
    show("versions-error", "");
    show("versions-ok", "");
    try {
      await api(method, path);
      show("versions-ok", done);
    } catch (e) {
      const why = e.status === 403 ? "refused: it needs a write key" : e.status === 401 ? "refused: it needs a key" : "failed";
      show("versions-error", `${method} ${path} ${why} (${e.status || "no answer"}): ${e.message}`);
    }
    tick();
  }

  function renderSurprises(result) {
    if (!changed("surprises", result.ok ? result.data : result.error.message)) return;
    const body = $("surprises").tBodies[0];
    if (!result.ok) {
      body.replaceChildren();
      show("surprises-note", `not available: ${result.error.message}`);
      return;
    }
    const rows = result.data.data.map((d) => {
      const tr = document.createElement("tr");
      cell(tr, num(d.surprise, 2));
      cell(tr, num(d.loss, 3));
      cell(tr, d.version == null ? "–" : `v${d.version}`);
      cell(tr, d.time == null ? "–" : String(d.time));
      const text = cell(tr, shortText(d.text, 160), "text");
      text.title = String(d.id == null ? "" : d.id);
      const meta = d.meta && typeof d.meta === "object" ? Object.entries(d.meta) : [];
      if (meta.length) {
        const m = document.createElement("div");
        m.className = "meta";
        m.textContent = meta.slice(0, 6).map(([k, v]) => `${k}: ${shortText(typeof v === "string" ? v : JSON.stringify(v), 60)}`).join(" · ");
        text.appendChild(m);
      }
      return tr;
    });
    body.replaceChildren(...rows);
    show("surprises-note", rows.length ? "" : "none yet: a surprise needs a few documents of history");
  }

  function renderTerms(result) {
    if (!changed("terms", result.ok ? result.data : result.error.message)) return;
    const body = $("terms").tBodies[0];
    if (!result.ok) {
      body.replaceChildren();
      show("terms-note", `not available: ${result.error.message}`);
      return;
    }
    const rows = result.data.data.map((t) => {
      const tr = document.createElement("tr");
      cell(tr, String(t.term));
      cell(tr, num(t.score, 2));
      cell(tr, typeof t.recent === "number" && !Number.isInteger(t.recent) ? num(t.recent, 3) : count(t.recent));
      cell(tr, typeof t.earlier === "number" && !Number.isInteger(t.earlier) ? num(t.earlier, 3) : count(t.earlier));
      const docs = t.documents;
      const td = cell(tr, Array.isArray(docs) ? String(docs.length) : count(docs));
      if (Array.isArray(docs)) {
        td.title = docs.slice(0, 10).map((d) => (typeof d === "object" && d ? d.id || d.text : d)).join("\n");
      }
      return tr;
    });
    body.replaceChildren(...rows);
    show("terms-note", rows.length ? "" : "none yet: terms emerge once the stream has some history");
  }

  // ---------- the loss chart (SVG) ----------

  function el(name, attrs, title) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (title) {
      const t = document.createElementNS(SVG, "title");
      t.textContent = title;
      node.appendChild(t);
    }
    return node;
  }

  function niceTicks(lo, hi, n) {
    const span = hi - lo || 1;
    const step0 = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || mag * 10;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) ticks.push(t);
    return ticks;
  }

  function finite(x) {
    return typeof x === "number" && isFinite(x);
  }

  // The chart's x axis: the documents' own times (stream time) where they have them, else
  // the server's wall clock. A version or event sits at the stream time reached when it
  // happened (that of the last step before it).
  let axis = "auto";
  let lastTimeline = null;
  const TICK_STEPS = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800, 1209600, 2592000, 7776000, 15552000, 31536000, 157680000, 315360000,
  ];

  function timeTicks(lo, hi) {
    const step = TICK_STEPS.find((s) => (hi - lo) / s <= 6) || TICK_STEPS[TICK_STEPS.length - 1];
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) ticks.push(t);
    return { ticks, step };
  }

  function utc(s, step) {
    const iso = new Date(s * 1000).toISOString(); // 2018-05-03T10:00:00.000Z
    if (step >= 2592000) return iso.slice(0, 7);
    if (step >= 86400) return iso.slice(0, 10);
    return iso.slice(0, 16).replace("T", " ");
  }

  // (wall clock, stream time reached) of each step whose documents have times, by wall clock.
  function streamClock(points) {
    const pairs = points
      .map((p) => [seconds(p.at), seconds(p.time)])
      .filter(([at, t]) => at != null && t != null)
      .sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < pairs.length; i++) pairs[i][1] = Math.max(pairs[i][1], pairs[i - 1][1]);
    return pairs;
  }

  function streamAt(pairs, at) {
    let found = pairs[0][1];
    for (const [when, t] of pairs) {
      if (when > at) break;
      found = t;
    }
    return found;
  }

  function renderChart(result) {
    lastTimeline = result;
    if (!changed("chart", [axis, result.ok ? result.data : result.error.message])) return;
    const svg = $("loss-chart");
    const note = $("chart-note");
    if (!result.ok) {
      svg.replaceChildren();
      svg.dataset.points = svg.dataset.versions = svg.dataset.events = "0";
      note.textContent = `not available: ${result.error.message}`;
      return;
    }
    const data = result.data;
    const raw = (data.points || []).filter((p) => seconds(p.at) != null && finite(p.stream_loss));
    const pairs = streamClock(raw);
    const stream = pairs.length > 0 && axis !== "clock";
    $("x-axis").value = stream ? "stream" : "clock";
    $("x-axis").options[0].disabled = pairs.length === 0;
    const place = (d) => {
      const at = seconds(d.at);
      if (at == null) return null;
      return stream ? streamAt(pairs, at) : at;
    };
    const points = raw.map((p) => ({ ...p, x: place(p) }));
    const versions = (data.versions || []).map((v) => ({ ...v, x: place(v) })).filter((v) => v.x != null);
    const events = (data.events || []).map((e) => ({ ...e, x: place(e) })).filter((e) => e.x != null);
    const ys = [];
    for (const p of points) ys.push(p.stream_loss);
    for (const v of versions) {
      if (finite(v.stream_loss)) ys.push(v.stream_loss);
      if (finite(v.canary_loss)) ys.push(v.canary_loss);
    }
    const xs = [...points, ...versions, ...events].map((d) => d.x);
    svg.replaceChildren();
    svg.dataset.points = String(points.length);
    svg.dataset.versions = String(versions.length);
    svg.dataset.events = String(events.length);
    svg.dataset.axis = stream ? "stream" : "clock";
    if (!xs.length) {
      note.textContent = "No steps yet: send documents (POST /v1/documents) and the curve starts.";
      return;
    }
    note.textContent =
      (stream
        ? "x: stream time (the documents' own times, UTC), a version or event at the stream time reached when it happened"
        : "x: when the server stepped or published (your clock)" +
          (pairs.length ? "" : "; the documents have no times")) +
      `. ${points.length} steps, ${versions.length} versions, ${events.length} events; hover a mark for its numbers.`;
    const W = 900, H = 300, L = 52, R = 14, T = 16, B = 28;
    let x0 = Math.min(...xs), x1 = Math.max(...xs);
    const least = stream ? 86400 : 10;
    if (x1 - x0 < least) { x0 -= least / 2; x1 += least / 2; }
    let y0 = ys.length ? Math.min(...ys) : 0, y1 = ys.length ? Math.max(...ys) : 1;
    const pad = (y1 - y0) * 0.08 || 0.5;
    y0 -= pad; y1 += pad;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const { ticks, step } = timeTicks(x0, x1);
    const fmt = (x) => (stream ? utc(x, step) : clock(x));
    const where = (d) => (stream ? `stream time ${utc(d.x, 0)}, ` : "") + `at ${clock(seconds(d.at))}`;

    for (const t of niceTicks(y0, y1, 5)) {
      svg.appendChild(el("line", { class: "grid", x1: L, x2: W - R, y1: sy(t), y2: sy(t) }));
      const label = el("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end" });
      label.textContent = t.toFixed(2);
      svg.appendChild(label);
    }
    for (const t of ticks) {
      const label = el("text", { x: sx(t), y: H - 8, "text-anchor": "middle" });
      label.textContent = fmt(t);
      svg.appendChild(label);
    }
    svg.appendChild(el("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    svg.appendChild(el("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    const ylabel = el("text", { x: L + 6, y: T + 10 });
    ylabel.textContent = "nats/token";
    svg.appendChild(ylabel);

    for (const e of events) {
      const kind = ["publish", "refused", "rollback", "drift"].includes(e.kind) ? e.kind : "drift";
      const what = `${e.kind}${e.version != null ? " v" + e.version : ""} (${where(e)})` +
        (e.docs != null ? `, ${e.docs} documents` : "") + (e.detail ? `: ${e.detail}` : "");
      svg.appendChild(el("line", { class: `event ${kind}`, x1: sx(e.x), x2: sx(e.x), y1: T, y2: H - B }, what));
      svg.appendChild(el("circle", { class: `event-mark ${kind}`, cx: sx(e.x), cy: T, r: 4 }, what));
    }

    const line = (items, y, cls) => {
      const pts = items.filter((d) => finite(y(d))).map((d) => `${sx(d.x).toFixed(1)},${sy(y(d)).toFixed(1)}`);
      if (pts.length > 1) svg.appendChild(el("polyline", { class: cls, points: pts.join(" ") }));
    };
    const byX = (a, b) => a.x - b.x || seconds(a.at) - seconds(b.at);
    points.sort(byX);
    versions.sort(byX);
    line(points, (p) => p.stream_loss, "stream-line");
    if (points.length <= 120) {
      for (const p of points) {
        const what = `step ${p.step ?? ""}: stream loss ${num(p.stream_loss, 3)}` +
          (p.version != null ? ` under v${p.version}` : "") + ` (${where(p)})`;
        svg.appendChild(el("circle", { class: "stream-point", cx: sx(p.x), cy: sy(p.stream_loss), r: 2 }, what));
      }
    }
    line(versions, (v) => v.stream_loss, "vstream-line");
    line(versions, (v) => v.canary_loss, "canary-line");
    for (const v of versions) {
      const what = `v${v.version} (${where(v)}): stream loss ${num(v.stream_loss, 3)}, canary loss ${num(v.canary_loss, 3)}`;
      if (finite(v.stream_loss)) {
        svg.appendChild(el("circle", { class: "version-point", cx: sx(v.x), cy: sy(v.stream_loss), r: 4 }, what));
      }
      if (finite(v.canary_loss)) {
        const c = sy(v.canary_loss), x = sx(v.x);
        svg.appendChild(el("rect", { class: "canary-point", x: x - 4, y: c - 4, width: 8, height: 8 }, what));
      }
    }
  }

  // ---------- prompt ----------

  // The newest kept version older than the live one, from /v1/models (`livelm@N` cards).
  function previousModel(cards, live) {
    let best = null;
    for (const c of cards) {
      if (c.id !== `${servedName}@${c.version}` || c.version >= live) continue;
      if (!best || c.version > best.version) best = c;
    }
    return best;
  }

  async function complete(model, prompt) {
    const { data, headers } = await api("POST", "/v1/completions", {
      model,
      prompt,
      max_tokens: ANSWER_TOKENS,
      temperature: 0,
    });
    const fingerprint = /livelm-v(\d+)/.exec(data.system_fingerprint || "");
    const version = Number(headers.get("X-Livelm-Version") || (fingerprint && fingerprint[1]));
    return { version, text: data.choices[0].text };
  }

  // Fill a pane with its answer; a failure leaves it empty and is returned as [what, error].
  function fill(pane, result, what) {
    if (result.status === "rejected") {
      $(`answer-${pane}`).textContent = "";
      return [[`The completion from ${what} failed`, result.reason]];
    }
    const { version, text } = result.value;
    $(`answer-${pane}-version`).textContent = `(v${version})`;
    $(`answer-${pane}`).textContent = text || "(an empty answer: the model ended at once)";
    return [];
  }

  // The live version and the one kept before it answer the same prompt, side by side: the
  // older one is named in the request (`livelm@N`), so both answers are made now.
  async function ask(event) {
    event.preventDefault();
    const prompt = $("prompt-input").value;
    show("prompt-error", "");
    if (!prompt.trim()) {
      show("prompt-error", "Type a prompt first.");
      return;
    }
    const button = $("prompt-send");
    button.disabled = true;
    for (const pane of ["live", "prev"]) {
      $(`answer-${pane}`).textContent = "…";
      $(`answer-${pane}-version`).textContent = "";
    }
    let failures = [];
    try {
      const cards = (await api("GET", "/v1/models")).data.data;
      servedName = cards[0].id;
      const live = cards[0].version;
      const previous = previousModel(cards, live);
      const [now, before] = await Promise.allSettled([
        complete(servedName, prompt),
        previous ? complete(previous.id, prompt) : null,
      ]);
      failures = fill("live", now, "the live version");
      if (previous) {
        failures = failures.concat(fill("prev", before, `v${previous.version}`));
        $("answer-prev-version").textContent = `(v${previous.version})`;
      } else {
        $("answer-prev").textContent =
          `No version older than v${live} is kept: ask again once a newer version is live.`;
      }
    } catch (e) {
      failures = [["Listing the versions (/v1/models) failed", e]];
      $("answer-live").textContent = $("answer-prev").textContent = "";
    } finally {
      button.disabled = false;
    }
    show(
      "prompt-error",
      failures
        .map(([what, e]) => `${what} (${e.status || "no answer"}): ${e.status === 401 ? "it needs a read key" : e.message}`)
        .join(". ")
    );
    if (failures.some(([, e]) => e.status === 401)) tick();
  }

  // ---------- key ----------

  function setKey(value) {
    key = value;
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    $("key-forget").hidden = !key;
    $("key-input").placeholder = key ? "key set (type another)" : "read or write key";
    show("versions-error", "");
    show("versions-ok", "");
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault(); // the key never leaves in a form submission or an address
      const input = $("key-input");
      setKey(input.value.trim());
      input.value = "";
      servedName = null;
      tick();
    });
    $("key-forget").addEventListener("click", () => {
      setKey("");
      tick();
    });
    $("prompt-form").addEventListener("submit", ask);
    $("x-axis").addEventListener("change", () => {
      axis = $("x-axis").value;
      if (lastTimeline) renderChart(lastTimeline);
    });
    setKey(key);
    tick();
  });
})();
