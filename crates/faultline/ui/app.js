// Faultline's dashboard: a page per hash route (#/queues?span=hour|day, #/jobs?filters,
// #/job/ID, #/schedules, #/workers), built from the JSON API with the same routes every client uses, refreshed every
// two seconds. Every text from the API goes in through textContent, never as markup. The token
// (when the server has one) is kept in this tab's session storage and sent as a bearer header.
"use strict";

const REFRESH_MS = 2000;
const STATES = ["waiting", "queued", "running", "succeeded", "failed", "cancelled"];
let token = sessionStorage.getItem("faultline-token") || "";
let timer = null;
let generation = 0; // a render started for an older route or refresh is dropped
const selected = new Set(); // job ids ticked on the jobs page, kept across refreshes

class NeedToken extends Error {}
class ApiDown extends Error {}

// --- the API ---------------------------------------------------------------------------------

/** Call the API; resolves to [parsed JSON, raw text]. */
async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  // Every mutating route asks for JSON, a body-less one included (the API's CSRF rule).
  if (method !== "GET") headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiDown("the API cannot be reached (" + e.message + ")");
  }
  if (response.status === 401) throw new NeedToken();
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!response.ok) {
    const detail = data && data.error ? data.error.code + ": " + data.error.message : text;
    const error = (response.status === 503 || response.status >= 502)
      ? new ApiDown("the API answered " + response.status + " (" + detail + ")")
      : new Error(response.status + " " + detail);
    error.status = response.status;
    throw error;
  }
  return [data, text];
}
const get = async (path) => (await call("GET", path))[0];

// --- building the page -------------------------------------------------------------------------

/** An element: h("td", {class: "num"}, "12", otherNode). Strings become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const table = (head, rows, attrs) => h("div", { class: "table-wrap" },
  h("table", attrs || {}, h("thead", {}, h("tr", {}, head.map((c) =>
    typeof c === "string" ? h("th", { scope: "col" }, c) : c))), h("tbody", {}, rows)));
const num = (n, attrs) => h("td", Object.assign({ class: "num" }, attrs || {}),
  Number(n).toLocaleString());
const state = (s) => h("span", { class: "state state-" + s, "data-state": s }, s);
const jobLink = (id) => h("a", { href: "#/job/" + id, "data-job": id }, id);

/** A time in the viewer's zone, the UTC value on hover. */
function time(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const d = new Date(iso);
  return h("time", { datetime: iso, title: d.toISOString() + " (UTC)" }, d.toLocaleString());
}
function age(seconds) {
  if (!seconds) return "—";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

/** The raw text of a top-level member of a JSON object's text (numbers kept digit for digit,
 *  which JSON.parse would round). */
function rawMember(text, name) {
  let i = 0;
  const ws = () => { while (" \t\r\n".includes(text[i])) i++; };
  const str = () => { const s = i; i++; while (text[i] !== '"') i += text[i] === "\\" ? 2 : 1; i++; return text.slice(s, i); };
  const value = () => {
    ws();
    const s = i;
    if (text[i] === '"') { str(); return text.slice(s, i); }
    if (text[i] === "{" || text[i] === "[") {
      let depth = 0;
      do {
        if (text[i] === '"') { str(); continue; }
        if (text[i] === "{" || text[i] === "[") depth++;
        if (text[i] === "}" || text[i] === "]") depth--;
        i++;
      } while (depth > 0 && i < text.length);
      return text.slice(s, i);
    }
    while (i < text.length && !",}]".includes(text[i])) i++;
    return text.slice(s, i).trim();
  };
  ws(); i++; // {
  while (i < text.length) {
    ws();
    if (text[i] === "}") return null;
    const key = JSON.parse(str());
    ws(); i++; // :
    const v = value();
    if (key === name) return v;
    ws();
    if (text[i] === ",") i++;
  }
  return null;
}

/** Indent JSON text without parsing it (so it stays exactly as stored). */
function indent(text) {
  let out = "", depth = 0, inString = false;
  const nl = () => "\n" + "  ".repeat(depth);
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out += c;
      if (c === "\\") { out += text[++i]; } else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') { inString = true; out += c; }
    else if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      if (text[i + 1] === close) { out += c + close; i++; } else { depth++; out += c + nl(); }
    } else if (c === "}" || c === "]") { depth--; out += nl() + c; }
    else if (c === ",") out += "," + nl();
    else if (c === ":") out += ": ";
    else if (!" \t\r\n".includes(c)) out += c;
  }
  return out;
}

/** JSON for reading: collapsed behind a summary when long. */
function jsonBlock(label, raw) {
  const pretty = indent(raw);
  const lines = pretty.split("\n").length;
  const pre = h("pre", { "data-json": label }, pretty);
  if (lines <= 20) return pre;
  return h("details", {}, h("summary", {}, label + " (" + lines + " lines, " + raw.length + " bytes)"), pre);
}

/** A button that runs `action` and then refreshes; an error shows in the banner. */
function action(label, run, attrs) {
  return h("button", Object.assign({
    type: "button",
    onclick: async (e) => {
      e.currentTarget.disabled = true;
      try { await run(); } catch (err) { showError(err); }
      refresh();
    },
  }, attrs || {}), label);
}

// --- pages -------------------------------------------------------------------------------------

const SPANS = { hour: { minutes: 60, label: "last hour" }, day: { minutes: 1440, label: "last day" } };

async function queuesPage(params) {
  const span = SPANS[params.get("span")] ? params.get("span") : "hour";
  const minutes = SPANS[span].minutes;
  const [queues, throughput] = await Promise.all([get("/v1/queues"), get("/v1/throughput?minutes=" + minutes)]);
  const byQueue = {};
  for (const m of throughput.minutes) (byQueue[m.queue] = byQueue[m.queue] || []).push(m);
  const rows = queues.queues.map((q) => {
    const buckets = bucketed(byQueue[q.queue] || [], minutes);
    return h("tr", { "data-queue": q.queue },
      h("th", { scope: "row" }, q.queue),
      STATES.map((s) => num(q[s] || 0, { "data-count": s })),
      h("td", { class: "num", "data-oldest": "" }, age(q.oldest_eligible_age_seconds)),
      h("td", { "data-chart": "throughput" }, throughputChart(buckets, span)),
      h("td", { "data-chart": "latency" }, latencyChart(buckets, span)),
      h("td", { "data-paused": String(q.paused) }, q.paused ? h("strong", { class: "error" }, "paused") : "running"),
      h("td", { class: "limits" }, limitsForm(q)),
      h("td", {}, q.paused
        ? action("Resume", () => call("POST", "/v1/queues/" + encodeURIComponent(q.queue) + "/resume"), { "data-action": "resume" })
        : action("Pause", () => call("POST", "/v1/queues/" + encodeURIComponent(q.queue) + "/pause"), { "data-action": "pause" })));
  });
  const spans = h("div", { class: "toolbar", role: "group", "aria-label": "Chart span" },
    Object.entries(SPANS).map(([key, s]) => h("a", {
      href: "#/queues?span=" + key, class: "chip", "data-span": key,
      "aria-current": key === span ? "true" : null,
    }, s.label)));
  return [
    h("h1", {}, "Queues"), spans,
    queues.queues.length === 0 ? h("p", { class: "muted" }, "No queue has jobs or settings yet.") :
      table(["Queue", ...STATES.map((s) => h("th", { class: "num", scope: "col" }, s)),
        h("th", { class: "num", scope: "col" }, "Oldest eligible"), "Finished, " + SPANS[span].label,
        "Latency p95, " + SPANS[span].label, "State", "Limits", ""], rows, { "data-table": "queues" }),
    h("p", { class: "legend" }, "Finished: ", h("span", { class: "ok" }, "■ succeeded"), " up, ",
      h("span", { class: "bad" }, "■ failed"), " down. Latency of the jobs that succeeded: ",
      h("span", { class: "wait" }, "■ wait"), " (due → started) and ", h("span", { class: "run" }, "■ run"),
      " (started → finished), the worst 95th percentile of each bar. Counted once a minute by the maintainer."),
  ];
}

/** The minutes of the last `span` minutes in 60 bars, newest right: counts summed, the worst
 *  95th percentile kept (percentiles cannot be added up; the worst is the honest summary). */
function bucketed(minutes, span) {
  const per = span / 60, now = Date.now(), bars = [];
  for (let i = 0; i < 60; i++) bars.push({ succeeded: 0, failed: 0, wait: null, run: null, from: null });
  for (const m of minutes) {
    const ago = Math.floor((now - new Date(m.minute).getTime()) / 60000);
    const slot = 59 - Math.floor(ago / per);
    if (slot < 0 || slot > 59) continue;
    const b = bars[slot];
    b.succeeded += m.succeeded; b.failed += m.failed;
    if (m.wait_p95_ms !== null && m.wait_p95_ms !== undefined) b.wait = Math.max(b.wait ?? 0, m.wait_p95_ms);
    if (m.run_p95_ms !== null && m.run_p95_ms !== undefined) b.run = Math.max(b.run ?? 0, m.run_p95_ms);
    if (!b.from || m.minute < b.from) b.from = m.minute;
  }
  return bars;
}

const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}
function chartFrame(label) {
  const svg = svgEl("svg", { class: "chart", width: 180, height: 36, viewBox: "0 0 180 36", role: "img", "aria-label": label });
  svg.append(svgEl("line", { x1: 0, x2: 180, y1: 18, y2: 18, stroke: "#d8dde2" }));
  return svg;
}
function bar(svg, slot, len, up, color, title) {
  const r = svgEl("rect", { x: slot * 3, width: 2, y: up ? 18 - len : 18, height: len, fill: color });
  const t = document.createElementNS(SVG, "title");
  t.textContent = title;
  r.append(t);
  svg.append(r);
}
function when(b) { return b.from ? new Date(b.from).toLocaleString() : ""; }

/** 60 bars: succeeded up from the middle line, failed down from it. */
function throughputChart(bars, span) {
  const total = bars.reduce((a, b) => a + b.succeeded + b.failed, 0);
  const svg = chartFrame(`${total} jobs finished in the ${SPANS[span].label}`);
  svg.dataset.total = total;
  const max = Math.max(1, ...bars.map((b) => Math.max(b.succeeded, b.failed)));
  bars.forEach((b, slot) => {
    const title = `${when(b)}: ${b.succeeded} succeeded, ${b.failed} failed`;
    if (b.succeeded) bar(svg, slot, Math.max(1, (b.succeeded / max) * 17), true, "#1a7f37", title);
    if (b.failed) bar(svg, slot, Math.max(1, (b.failed / max) * 17), false, "#c62828", title);
  });
  return svg;
}

/** 60 bars: p95 wait up from the middle line, p95 run time down from it, on one scale. */
function latencyChart(bars, span) {
  const worst = Math.max(0, ...bars.map((b) => Math.max(b.wait ?? 0, b.run ?? 0)));
  const svg = chartFrame(worst ? `worst p95 latency in the ${SPANS[span].label}: ${ms(worst)}` : "no latency measured");
  svg.dataset.worst = worst;
  const max = Math.max(1, worst);
  bars.forEach((b, slot) => {
    const title = `${when(b)}: p95 wait ${b.wait === null ? "—" : ms(b.wait)}, p95 run ${b.run === null ? "—" : ms(b.run)}`;
    if (b.wait !== null) bar(svg, slot, Math.max(1, (b.wait / max) * 17), true, "#9a6700", title);
    if (b.run !== null) bar(svg, slot, Math.max(1, (b.run / max) * 17), false, "#0b5cad", title);
  });
  return svg;
}
function ms(v) { return v < 1000 ? v.toFixed(v < 10 ? 1 : 0) + " ms" : (v / 1000).toFixed(1) + " s"; }

function limitsForm(q) {
  const field = (name, label, value) => h("label", {}, label + " ",
    h("input", { name, type: "number", min: 1, value: value ?? "", placeholder: "none", "aria-label": `${label} of ${q.queue}` }));
  const form = h("form", {
    "data-limits": q.queue,
    onsubmit: async (e) => {
      e.preventDefault();
      const f = new FormData(e.currentTarget);
      const n = (k) => (f.get(k) === "" ? null : Number(f.get(k)));
      const count = n("rate_count"), period = n("rate_period_ms");
      const patch = {
        concurrency_limit: n("concurrency_limit"),
        key_concurrency: n("key_concurrency"),
        rate_limit: count === null && period === null ? null : { count, period_ms: period },
      };
      try { await call("PATCH", "/v1/queues/" + encodeURIComponent(q.queue), patch); } catch (err) { showError(err); }
      refresh(true);
    },
  },
  field("concurrency_limit", "concurrency", q.concurrency_limit),
  field("key_concurrency", "per key", q.key_concurrency),
  field("rate_count", "rate", q.rate_limit && q.rate_limit.count),
  field("rate_period_ms", "per ms", q.rate_limit && q.rate_limit.period_ms),
  h("button", { type: "submit" }, "Save"));
  return h("details", {}, h("summary", {}, describeLimits(q)), form);
}
function describeLimits(q) {
  const parts = [];
  if (q.concurrency_limit) parts.push(q.concurrency_limit + " at once");
  if (q.key_concurrency) parts.push(q.key_concurrency + " per key");
  if (q.rate_limit) parts.push(q.rate_limit.count + " per " + q.rate_limit.period_ms + " ms");
  return parts.length ? parts.join(", ") : "none";
}

const FILTERS = ["state", "queue", "kind", "key", "created_after", "created_before"];
let pendingBulk = null; // {verb, filter (query text), matched, more}: a count awaiting confirmation

function jobsFilter(params) {
  const f = { cursor: params.get("cursor") || "" };
  for (const k of FILTERS) f[k] = params.get(k) || "";
  return f;
}
/** `datetime-local` text (the viewer's zone) as RFC 3339 UTC, and back. */
const toUtc = (local) => (local ? new Date(local).toISOString() : "");
function toLocal(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d)) return "";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}
const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function searchForm(f) {
  return h("form", {
    class: "toolbar", "data-filters": "",
    onsubmit: (e) => {
      e.preventDefault();
      const d = new FormData(e.currentTarget), q = new URLSearchParams();
      const id = String(d.get("id") || "").trim();
      if (id) {
        if (!ID.test(id)) { showError(new Error(`"${id}" is not a job id (a UUID)`)); return; }
        location.hash = "#/job/" + id.toLowerCase();
        return;
      }
      for (const k of ["state", "queue", "kind", "key"]) if (d.get(k)) q.set(k, String(d.get(k)).trim());
      for (const k of ["created_after", "created_before"]) if (d.get(k)) q.set(k, toUtc(d.get(k)));
      selected.clear();
      pendingBulk = null;
      location.hash = "#/jobs" + (q.toString() ? "?" + q : "");
    },
  },
  h("label", {}, "Id", h("input", { name: "id", size: 20, placeholder: "go to a job" })),
  h("label", {}, "State", h("select", { name: "state" }, h("option", { value: "" }, "any"),
    STATES.map((s) => h("option", { value: s, selected: s === f.state }, s)))),
  h("label", {}, "Queue", h("input", { name: "queue", value: f.queue, size: 12 })),
  h("label", {}, "Kind", h("input", { name: "kind", value: f.kind, size: 12 })),
  h("label", {}, "Idempotency key", h("input", { name: "key", value: f.key, size: 14 })),
  h("label", {}, "Created from", h("input", { name: "created_after", type: "datetime-local", value: toLocal(f.created_after) })),
  h("label", {}, "to", h("input", { name: "created_before", type: "datetime-local", value: toLocal(f.created_before) })),
  h("button", { type: "submit" }, "Search"),
  h("a", { href: "#/jobs" }, "Clear"));
}

/** "Retry all matching" / "Cancel all matching": count first (a dry run), then ask. */
function bulkByFilter(f) {
  const filter = Object.fromEntries(FILTERS.filter((k) => f[k]).map((k) => [k, f[k]]));
  const key = JSON.stringify(filter);
  const ask = (label, verb) => action(label, async () => {
    const outcome = (await call("POST", "/v1/jobs/bulk", { action: verb, filter, dry_run: true }))[0];
    pendingBulk = { verb, key, matched: outcome.matched, more: outcome.more };
  }, { "data-bulk-all": verb });
  const bar = h("div", { class: "toolbar" }, ask("Retry all matching…", "retry"), ask("Cancel all matching…", "cancel"));
  if (!pendingBulk || pendingBulk.key !== key) return [bar];
  const p = pendingBulk;
  const n = p.matched.toLocaleString() + (p.more ? "+" : "");
  const confirm = h("div", { class: "confirm", role: "alertdialog", "aria-label": "Confirm", "data-confirm": p.verb, "data-matched": p.matched },
    p.matched === 0 ? h("span", {}, `No job matching this search can be ${p.verb === "retry" ? "retried" : "cancelled"}.`)
      : h("span", {}, `${p.verb === "retry" ? "Retry" : "Cancel"} ${n} job${p.matched === 1 ? "" : "s"} matching this search` +
        (p.more ? " (10,000 now; run it again for the rest)" : "") + "?"),
    p.matched === 0 ? null : action(`${p.verb === "retry" ? "Retry" : "Cancel"} ${n}`, async () => {
      pendingBulk = null;
      const outcome = (await call("POST", "/v1/jobs/bulk", { action: p.verb, filter }))[0];
      notice(`${outcome.changed.toLocaleString()} of ${outcome.matched.toLocaleString()} job(s) ${p.verb === "retry" ? "retried" : "cancelled"}` +
        (outcome.refused.length ? `; refused: ${outcome.refused.map((r) => r.id + " (" + r.error + ")").join(", ")}` : "") + ".");
    }, { "data-action": "confirm", class: p.verb === "cancel" ? "danger" : null }),
    h("button", { type: "button", "data-action": "dismiss", onclick: () => { pendingBulk = null; refresh(true); } }, "Never mind"));
  return [bar, confirm];
}

async function jobsPage(params) {
  const f = jobsFilter(params);
  const query = new URLSearchParams({ limit: "50" });
  for (const k of [...FILTERS, "cursor"]) if (f[k]) query.set(k, f[k]);
  const page = await get("/v1/jobs?" + query);
  const visible = new Set(page.jobs.map((j) => j.id));
  for (const id of [...selected]) if (!visible.has(id)) selected.delete(id);
  const bulk = (label, verb, states) => action(label, async () => {
    const ids = page.jobs.filter((j) => selected.has(j.id) && states.includes(j.state)).map((j) => j.id);
    const results = await Promise.allSettled(ids.map((id) => call("POST", `/v1/jobs/${id}/${verb}`)));
    const failed = results.filter((r) => r.status === "rejected");
    selected.clear();
    if (failed.length) throw new Error(`${failed.length} of ${ids.length}: ${failed[0].reason.message}`);
  }, { "data-bulk": verb });
  const rows = page.jobs.map((j) => h("tr", { "data-row": j.id },
    h("td", {}, h("input", {
      type: "checkbox", checked: selected.has(j.id), "aria-label": "select " + j.id,
      onchange: (e) => { if (e.currentTarget.checked) selected.add(j.id); else selected.delete(j.id); },
    })),
    h("td", {}, jobLink(j.id)), h("td", {}, j.kind), h("td", {}, j.queue), h("td", {}, state(j.state)),
    h("td", { class: "num" }, `${j.attempts}/${j.max_attempts}`), h("td", {}, time(j.created_at)),
    h("td", {}, time(j.finished_at)), h("td", { class: "wrap" }, j.last_error || "")));
  const kept = Object.fromEntries(Object.entries(f).filter(([k, v]) => v && k !== "cursor"));
  const nav = h("div", { class: "toolbar" },
    f.cursor ? h("a", { href: "#/jobs?" + new URLSearchParams(kept) }, "← First page") : null,
    page.next_cursor ? h("a", {
      href: "#/jobs?" + new URLSearchParams({ ...kept, cursor: page.next_cursor }),
      "data-next": "",
    }, "Next page →") : null);
  return [
    h("h1", {}, "Jobs"), searchForm(f), ...bulkByFilter(f),
    h("div", { class: "toolbar" }, bulk("Retry selected", "retry", ["failed", "cancelled"]),
      bulk("Cancel selected", "cancel", ["waiting", "queued", "running"])),
    page.jobs.length === 0 ? h("p", { class: "muted" }, "No job matches.") :
      table(["", "Id", "Kind", "Queue", "State", h("th", { class: "num" }, "Attempts"), "Created", "Finished", "Last error"], rows, { "data-table": "jobs" }),
    nav,
  ];
}

async function jobPage(id) {
  const [[job, raw], dependents] = await Promise.all([
    call("GET", "/v1/jobs/" + encodeURIComponent(id)),
    get("/v1/jobs/" + encodeURIComponent(id) + "/dependents"),
  ]);
  // The parents' states, for the dependency view (a pruned parent shows as gone).
  const parents = await Promise.all(job.depends_on.slice(0, 50).map((p) =>
    get("/v1/jobs/" + p).catch((e) => (e.status === 404 ? { id: p, state: null } : Promise.reject(e)))));
  const field = (name, value) => [h("dt", {}, name), h("dd", { "data-field": name }, value ?? h("span", { class: "muted" }, "—"))];
  const buttons = h("div", { class: "toolbar" },
    ["failed", "cancelled"].includes(job.state) ? action("Retry", () => call("POST", `/v1/jobs/${job.id}/retry`), { "data-action": "retry" }) : null,
    ["waiting", "queued", "running"].includes(job.state) ? action("Cancel", () => call("POST", `/v1/jobs/${job.id}/cancel`), { "data-action": "cancel", class: "danger" }) : null);
  const payload = rawMember(raw, "payload");
  const result = rawMember(raw, "result");
  const attempts = job.errors.slice().reverse().map((e) => h("tr", {},
    h("td", { class: "num" }, e.attempt), h("td", {}, time(e.at)), h("td", {}, e.worker || "—"),
    h("td", {}, reasonText(e.reason)), h("td", { class: "wrap", "data-error": "" }, e.error),
    h("td", {}, time(e.retry_at))));
  return [
    h("h1", {}, "Job ", h("code", {}, job.id)), buttons,
    h("dl", { class: "fields" },
      field("state", state(job.state)), field("kind", job.kind), field("queue", job.queue),
      field("attempts", `${job.attempts} of ${job.max_attempts}`), field("priority", job.priority),
      field("created", time(job.created_at)), field("next run", time(job.next_run_at)),
      field("started", time(job.started_at)), field("finished", time(job.finished_at)),
      field("lease owner", job.lease_owner), field("fencing token", job.lease_token),
      field("lease expires", job.lease_expires_at ? time(job.lease_expires_at) : null),
      field("idempotency key", job.idempotency_key), field("concurrency key", job.concurrency_key),
      field("timeout", job.timeout_ms ? job.timeout_ms + " ms" : null),
      field("waiting for", job.waiting_for ? `signal "${job.waiting_for.signal}" until ${new Date(job.waiting_for.until).toLocaleString()}`
        : job.state === "waiting" ? `${job.pending_dependencies} of ${job.depends_on.length} dependencies` : null),
      field("steps", (job.steps || []).length ? `${job.steps.length} recorded` : null),
      field("last error", job.last_error)),
    h("h2", {}, "Timeline"), timeline(job),
    h("h2", {}, "Dependencies"), dependencyView(job, parents, dependents.jobs),
    h("h2", {}, "Payload"), payload === null ? h("p", { class: "muted" }, "none") : jsonBlock("payload", payload),
    h("h2", {}, "Result"), result === null || result === "null" ? h("p", { class: "muted" }, "none") : jsonBlock("result", result),
    h("h2", {}, "Attempts that failed"),
    attempts.length ? table(["Attempt", "At", "Worker", "Reason", "Error", "Retry at"], attempts, { "data-table": "attempts" })
      : h("p", { class: "muted" }, "none"),
  ];
}
/** Every attempt in order: created, each failure (with its worker and reason), the current or
 *  last attempt's start, and how it ended. A failed attempt's start is not kept, only its end. */
function timeline(job) {
  const events = [["created", job.created_at, "created" + (job.idempotency_key ? ` (key ${job.idempotency_key})` : "")]];
  for (const e of job.errors) {
    events.push(["failed", e.at, `attempt ${e.attempt} failed on ${e.worker || "a worker"}: ${reasonText(e.reason)}`, e.error,
      e.retry_at ? "retry at " + new Date(e.retry_at).toLocaleString() : null]);
  }
  const lastFailed = job.errors.length && job.errors[job.errors.length - 1].attempt === job.attempts;
  if (job.started_at && job.attempts > 0 && !lastFailed) {
    events.push(["started", job.started_at, `attempt ${job.attempts} started` + (job.lease_owner ? ` on ${job.lease_owner}` : "") +
      (job.lease_token ? ` (fencing token ${job.lease_token})` : "")]);
  }
  if (job.state === "succeeded") {
    const took = job.started_at ? ` in ${ms(new Date(job.finished_at) - new Date(job.started_at))}` : "";
    events.push(["succeeded", job.finished_at, `attempt ${job.attempts} succeeded${took}`]);
  } else if (job.state === "cancelled") {
    events.push(["cancelled", job.finished_at, "cancelled"]);
  } else if (job.state === "failed" && !lastFailed) {
    events.push(["failed", job.finished_at, "failed for good"]);
  } else if (job.state === "running") {
    events.push(["running", job.lease_expires_at, "running; lease until"]);
  } else if (job.state === "queued" || job.state === "waiting") {
    events.push([job.state, job.next_run_at, job.state === "queued" ? `attempt ${job.attempts + 1} due` : "waiting for dependencies"]);
  }
  for (const st of job.steps || []) {
    const internal = st.name.startsWith("faultline:");
    const label = internal ? st.name.slice("faultline:".length).replace(":", " ") : "step " + st.name;
    events.push(["step", st.recorded_at, `${label} recorded by attempt ${st.attempt} (token ${st.lease_token})`,
      st.result === null || st.result === undefined ? null : JSON.stringify(st.result).slice(0, 300)]);
  }
  if (job.waiting_for) {
    events.push(["waiting", job.updated_at, `waiting for signal "${job.waiting_for.signal}"`, null,
      "until " + new Date(job.waiting_for.until).toLocaleString()]);
  }
  events.sort((a, b) => (a[1] || "").localeCompare(b[1] || ""));
  return h("ol", { class: "timeline", "data-timeline": "" }, events.map(([kind, at, text, detail, after]) =>
    h("li", { "data-event": kind, class: "ev-" + kind }, time(at), " ", h("strong", {}, text),
      detail ? h("div", { class: "wrap", [kind === "step" ? "data-step-result" : "data-error"]: "" }, detail) : null,
      after ? h("div", { class: "muted" }, after) : null)));
}

/** Parents (what this job waits for) and children (what waits for it), with their states. */
function dependencyView(job, parents, children) {
  const list = (jobs, attr, empty) => jobs.length === 0 ? h("p", { class: "muted" }, empty) :
    h("ul", { [attr]: "" }, jobs.map((d) => h("li", { "data-dep": d.id }, jobLink(d.id), " ",
      d.state ? state(d.state) : h("span", { class: "muted" }, "pruned from history"), d.kind ? " " + d.kind : "")));
  return h("div", { class: "deps" },
    h("div", {}, h("h3", {}, `Waits for (${job.depends_on.length})`), list(parents, "data-parents", "nothing")),
    h("div", { class: "dep-self" }, "→ ", h("code", {}, job.id.slice(0, 8)), " " , state(job.state), " →"),
    h("div", {}, h("h3", {}, `Needed by (${children.length})`), list(children, "data-children", "nothing")));
}

function reasonText(reason) {
  return ({ error: "handler error", lease_expired: "lease expired (worker stopped heartbeating)",
    dependency: "a dependency failed or was cancelled" })[reason] || reason;
}

async function schedulesPage() {
  const { schedules } = await get("/v1/schedules");
  const rows = schedules.map((s) => h("tr", { "data-schedule": s.name },
    h("th", { scope: "row" }, s.name), h("td", {}, h("code", {}, s.cron)), h("td", {}, s.timezone),
    h("td", {}, s.kind), h("td", {}, s.queue), h("td", {}, time(s.next_run_at)), h("td", {}, time(s.last_run_at)),
    h("td", {}, s.last_job_id ? jobLink(s.last_job_id) : "—"),
    h("td", { "data-paused": String(s.paused) }, s.paused ? h("strong", { class: "error" }, "paused") : "active"),
    h("td", {}, s.paused
      ? action("Resume", () => call("POST", `/v1/schedules/${encodeURIComponent(s.name)}/resume`), { "data-action": "resume" })
      : action("Pause", () => call("POST", `/v1/schedules/${encodeURIComponent(s.name)}/pause`), { "data-action": "pause" }))));
  return [h("h1", {}, "Schedules"), schedules.length === 0 ? h("p", { class: "muted" }, "No schedules.") :
    table(["Name", "Cron", "Time zone", "Kind", "Queue", "Next run", "Last run", "Last job", "State", ""], rows, { "data-table": "schedules" })];
}

async function workersPage() {
  const { workers, leader } = await get("/v1/workers");
  const rows = workers.map((w) => h("tr", { "data-worker": w.id },
    h("th", { scope: "row" }, w.id, w.leader ? h("strong", { "data-leader": "" }, " ★ leads") : ""),
    h("td", { class: "wrap" }, w.queues.join(", ")), num(w.concurrency), num(w.prefetch), num(w.inflight),
    h("td", {}, time(w.started_at)), h("td", {}, time(w.last_seen_at))));
  return [
    h("h1", {}, "Workers"),
    h("p", {}, leader ? ["Maintainer: ", h("strong", { "data-holder": "" }, leader.holder), ` (term ${leader.token}, until `, time(leader.expires_at), ")"]
      : h("span", { class: "muted" }, "No process leads maintenance right now.")),
    workers.length === 0 ? h("p", { class: "muted" }, "No live worker.") :
      table(["Worker", "Queues", h("th", { class: "num" }, "Concurrency"), h("th", { class: "num" }, "Prefetch"),
        h("th", { class: "num" }, "Holding"), "Started", "Last seen"], rows, { "data-table": "workers" }),
  ];
}

// --- routing and refresh -----------------------------------------------------------------------

function route() {
  const [path, query] = (location.hash.slice(1) || "/queues").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  switch (parts[0]) {
    case "jobs": return ["jobs", () => jobsPage(params)];
    case "job": return ["jobs", () => jobPage(decodeURIComponent(parts[1] || ""))];
    case "schedules": return ["schedules", schedulesPage];
    case "workers": return ["workers", workersPage];
    default: return ["queues", () => queuesPage(params)];
  }
}

/** A message of success in the banner (it goes with the next refresh that is not an error). */
function notice(text) {
  const banner = document.getElementById("banner");
  banner.textContent = text;
  banner.hidden = false;
  banner.dataset.kind = "notice";
}

function showError(err) {
  const banner = document.getElementById("banner");
  banner.textContent = err instanceof ApiDown
    ? "Cannot refresh: " + err.message + ". Retrying every " + REFRESH_MS / 1000 + " s; what you see is from the last refresh."
    : "That did not work: " + err.message;
  banner.hidden = false;
  banner.dataset.kind = err instanceof ApiDown ? "down" : "error";
}

/** Render the current route; `force`: even while a form on the page has focus. */
async function refresh(force) {
  clearTimeout(timer);
  const mine = ++generation;
  const [nav, page] = route();
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  const busy = main.contains(document.activeElement) &&
    ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  const open = [...main.querySelectorAll("details[open]")].map((d) => d.textContent.slice(0, 40));
  try {
    if (busy && !force) return;
    const content = await page();
    if (mine !== generation) return;
    document.getElementById("login").hidden = true;
    main.hidden = false;
    main.replaceChildren(...content);
    for (const d of main.querySelectorAll("details")) if (open.includes(d.textContent.slice(0, 40))) d.open = true;
    const banner = document.getElementById("banner");
    if (banner.dataset.kind === "down") { banner.hidden = true; banner.dataset.kind = ""; }
    document.getElementById("refreshed").textContent = "refreshed " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = nav;
    // The first render with data, for the page's time-to-first-render figure.
    if (!performance.getEntriesByName("faultline-rendered").length) performance.mark("faultline-rendered");
  } catch (err) {
    if (mine !== generation) return;
    if (err instanceof NeedToken) { askForToken(); return; }
    showError(err);
  } finally {
    if (mine === generation && document.getElementById("login").hidden) timer = setTimeout(refresh, REFRESH_MS);
  }
}

function askForToken() {
  const main = document.getElementById("main");
  main.replaceChildren();
  main.hidden = true;
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("login-error").textContent = token ? "That token was refused." : "";
  document.getElementById("token").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem("faultline-token", token);
    document.getElementById("login").hidden = true;
    refresh(true);
  });
  window.addEventListener("hashchange", () => {
    const banner = document.getElementById("banner");
    if (banner.dataset.kind === "notice") { banner.hidden = true; banner.dataset.kind = ""; }
    document.getElementById("main").focus();
    refresh(true);
  });
  refresh(true);
});
