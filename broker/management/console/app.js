"use strict";
// The broker's web console: a client of the management HTTP API, which speaks RabbitMQ's
// JSON shapes, so every page reads the same fields RabbitMQ's own UI and tools do. No build
// step and nothing fetched from elsewhere: this file, index.html and style.css are all.

const AUTH_KEY = "broker-console-auth";
const HISTORY = 60; // chart points kept (5 minutes at the default refresh)
const COLORS = ["#e8710a", "#1a73e8", "#188038", "#a142f4", "#d93025"];

let refreshTimer = null;
let currentRefresh = null;
const sortState = {}; // table id -> {key, desc}: kept across refreshes
const history = {
  t: [],
  ready: [],
  unacked: [],
  publish: [],
  deliver: [],
  ack: [],
  conns: [],
  created: [],
  closed: [],
};
let lastOverview = null;

// -- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

function basicToken(user, password) {
  // btoa takes Latin-1 only: encode the UTF-8 bytes so any user name works.
  const bytes = new TextEncoder().encode(user + ":" + password);
  return btoa(String.fromCharCode(...bytes));
}

async function api(method, path, body) {
  const headers = {
    Authorization: "Basic " + sessionStorage.getItem(AUTH_KEY),
    // no WWW-Authenticate on a 401 then: this page's login form, not the browser's dialog
    "X-Requested-With": "XMLHttpRequest",
  };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch("api" + path, init);
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (e) {
      data = { reason: text };
    }
  }
  if (!resp.ok) {
    const reason = (data && (data.reason || data.error)) || resp.statusText;
    throw new ApiError(resp.status, reason);
  }
  return data;
}

const enc = encodeURIComponent;

// -- DOM helpers -----------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function flash(message, ok) {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.className = ok ? "ok" : "bad";
}

function num(v) {
  return v === undefined || v === null ? "" : Number(v).toLocaleString("en");
}

function rate(v) {
  return v === undefined || v === null ? "" : Number(v).toFixed(1) + "/s";
}

function detail(obj, key) {
  const d = obj && obj[key + "_details"];
  return d ? d.rate : undefined;
}

function bytes(v) {
  if (v === undefined || v === null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let n = Number(v);
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function byteRate(v) {
  return v === undefined ? "" : bytes(v) + "/s";
}

function args(obj) {
  if (obj === undefined || obj === null) return "";
  if (typeof obj !== "object") return String(obj);
  return Object.entries(obj)
    .map(([k, v]) => k + ": " + (typeof v === "object" ? JSON.stringify(v) : v))
    .join(", ");
}

function tags(v) {
  return Array.isArray(v) ? v.join(", ") : v || "";
}

// A sortable table. columns: [{title, value(row), show(row)?, num?, sort?}]; clicking a
// header sorts by it (again: reversed), and the choice survives the next refresh. With
// `list` (a list page's state) the API sorts, by the columns' `sort` keys, and the table
// shows the rows as they come.
function table(id, columns, rows, list) {
  if (list) return serverTable(id, columns, rows, list);
  const st = sortState[id] || (sortState[id] = { key: null, desc: false });
  const sorted = rows.slice();
  if (st.key !== null) {
    const col = columns[st.key];
    sorted.sort((a, b) => {
      const x = col.value(a);
      const y = col.value(b);
      const c =
        typeof x === "number" && typeof y === "number"
          ? x - y
          : String(x ?? "").localeCompare(String(y ?? ""));
      return st.desc ? -c : c;
    });
  }
  const head = h(
    "tr",
    {},
    columns.map((col, i) =>
      h("th", {
        class: headerClass(true, st.key === i, st.desc),
        "data-col": col.title,
        text: col.title,
        onclick: () => {
          if (st.key === i) st.desc = !st.desc;
          else Object.assign(st, { key: i, desc: false });
          document.getElementById(id).replaceWith(table(id, columns, rows));
        },
      }),
    ),
  );
  return h("table", { id }, h("thead", {}, head), tableBody(columns, sorted));
}

function headerClass(sortable, sorted, reverse) {
  const order = sorted ? (reverse ? " sorted-desc" : " sorted-asc") : "";
  return (sortable ? "sortable" : "") + order;
}

function serverTable(id, columns, rows, list) {
  const head = h(
    "tr",
    {},
    columns.map((col) => {
      const sorted = col.sort && list.sort === col.sort;
      return h("th", {
        class: headerClass(col.sort, sorted, list.reverse),
        "data-col": col.title,
        text: col.title,
        onclick: col.sort
          ? () => {
              if (list.sort === col.sort) list.reverse = !list.reverse; // as of the click
              else Object.assign(list, { sort: col.sort, reverse: false });
              list.page = 1;
              refreshNow();
            }
          : null,
      });
    }),
  );
  return h("table", { id }, h("thead", {}, head), tableBody(columns, rows));
}

function tableBody(columns, rows) {
  const body = rows.map((row) =>
    h(
      "tr",
      {},
      columns.map((col) =>
        h("td", { class: col.num ? "num" : null }, col.show ? col.show(row) : col.value(row)),
      ),
    ),
  );
  const empty = rows.length
    ? null
    : h("tr", {}, h("td", { colspan: columns.length, class: "muted", text: "(none)" }));
  return h("tbody", {}, body, empty);
}

// Long lists (queues, exchanges, connections) come a page at a time, filtered and sorted by
// the API with RabbitMQ's query parameters (page, page_size, name, sort, sort_reverse): a
// broker with thousands of them sends the page shown at each refresh, not all of them.
// A list page's filter text, page, size and order are kept across refreshes and visits.
const lists = {};
const PAGE_SIZES = [25, 100, 500];

function listOf(pageName) {
  if (!lists[pageName]) {
    lists[pageName] = { filter: "", page: 1, size: 100, sort: null, reverse: false };
  }
  return lists[pageName];
}

function escapeRegex(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// One page of `path`'s list as the API answers it: {items, page, page_count, ...}.
async function pagedList(pageName, path) {
  const st = listOf(pageName);
  const query = new URLSearchParams({ page: st.page, page_size: st.size });
  if (st.filter) {
    // names containing the text, in any case
    query.set("name", "(?i)" + escapeRegex(st.filter));
    query.set("use_regex", "true");
  }
  if (st.sort) {
    query.set("sort", st.sort);
    query.set("sort_reverse", String(st.reverse));
  }
  const result = await api("GET", path + "?" + query);
  if (st.page > result.page_count) {
    st.page = result.page_count; // the list got shorter: its last page
    return pagedList(pageName, path);
  }
  return result;
}

// The filter box and page size of a list page, outside the part a refresh rebuilds (so
// typing goes on undisturbed).
function listTools(pageName) {
  const st = listOf(pageName);
  const input = h("input", {
    id: "filter",
    type: "search",
    placeholder: "names containing…",
    value: st.filter,
  });
  input.addEventListener("input", () => {
    Object.assign(st, { filter: input.value, page: 1 });
    refreshNow();
  });
  const size = h(
    "select",
    { id: "page-size" },
    PAGE_SIZES.map((n) => h("option", { value: n, selected: n === st.size, text: String(n) })),
  );
  size.addEventListener("change", () => {
    Object.assign(st, { size: Number(size.value), page: 1 });
    refreshNow();
  });
  return h(
    "div",
    { class: "tools" },
    h("label", {}, "Filter ", input),
    h("label", {}, " Per page ", size),
  );
}

// "Page 2 of 3 · 230 matching of 5,000" and the buttons to move.
function pager(pageName, result) {
  const st = listOf(pageName);
  const go = (page) => () => {
    st.page = page;
    refreshNow();
  };
  return h(
    "p",
    { class: "pager", id: "pager" },
    h("button", {
      type: "button",
      id: "page-prev",
      text: "‹ Previous",
      disabled: result.page <= 1,
      onclick: go(result.page - 1),
    }),
    " Page " + result.page + " of " + result.page_count + " · " + num(result.filtered_count),
    result.filtered_count === result.total_count ? "" : " matching of " + num(result.total_count),
    " ",
    h("button", {
      type: "button",
      id: "page-next",
      text: "Next ›",
      disabled: result.page >= result.page_count,
      onclick: go(result.page + 1),
    }),
  );
}

// -- charts ----------------------------------------------------------------------------

// A line chart of `series` ([{label, values}]) sampled at `times` (ms).
function drawChart(canvas, times, series, unit) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const hgt = canvas.clientHeight;
  canvas.width = w * ratio;
  canvas.height = hgt * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, hgt);
  const left = 50;
  const bottom = hgt - 20;
  const top = 10;
  const right = w - 10;
  let max = 0;
  for (const s of series) for (const v of s.values) max = Math.max(max, v || 0);
  max = niceCeiling(max);
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#666";
  ctx.font = "11px sans-serif";
  ctx.textAlign = "right";
  for (let i = 0; i <= 4; i += 1) {
    const y = bottom - ((bottom - top) * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(right, y);
    ctx.stroke();
    ctx.fillText(formatTick((max * i) / 4) + unit, left - 4, y + 4);
  }
  if (times.length) {
    const t1 = times[times.length - 1];
    const t0 = t1 - HISTORY * currentInterval();
    const x = (t) => left + ((right - left) * (t - t0)) / Math.max(1, t1 - t0);
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, 0, right - left + 5, hgt); // samples older than the window stay out
    ctx.clip();
    series.forEach((s, k) => {
      ctx.strokeStyle = COLORS[k % COLORS.length];
      ctx.lineWidth = 2;
      ctx.beginPath();
      const y = (v) => bottom - ((bottom - top) * (v || 0)) / max;
      s.values.forEach((v, i) => {
        if (i === 0) ctx.moveTo(x(times[i]), y(v));
        else ctx.lineTo(x(times[i]), y(v));
      });
      ctx.stroke();
      ctx.lineWidth = 1;
      // the newest sample as a dot, so the first one shows before there is a line
      const last = s.values.length - 1;
      ctx.fillStyle = ctx.strokeStyle;
      ctx.beginPath();
      ctx.arc(x(times[last]), y(s.values[last]), 3, 0, 2 * Math.PI);
      ctx.fill();
    });
    ctx.restore();
    ctx.textAlign = "left";
    ctx.fillStyle = "#666";
    ctx.fillText(new Date(t1).toLocaleTimeString(), right - 60, hgt - 4);
  }
}

function niceCeiling(v) {
  if (v <= 1) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function formatTick(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return Number.isInteger(v) ? String(v) : String(Number(v.toFixed(2)));
}

function chart(id, title, times, series, unit) {
  const canvas = h("canvas", { id });
  const legend = h(
    "div",
    { class: "legend" },
    series.map((s, k) => {
      const swatch = h("i");
      swatch.style.background = COLORS[k % COLORS.length]; // not an attribute: the CSP allows it
      return h("span", {}, swatch, s.label);
    }),
  );
  const box = h("div", { class: "chart" }, h("h2", { text: title }), canvas, legend);
  requestAnimationFrame(() => drawChart(canvas, times, series, unit));
  return box;
}

// Rates as the API gives them (`*_details.rate`), or from the counters' change since the
// last poll when a node does not send details.
function rateFrom(stats, prev, key, seconds) {
  const r = detail(stats, key);
  if (r !== undefined) return r;
  if (!prev || !seconds || stats[key] === undefined || prev[key] === undefined) return 0;
  return Math.max(0, (stats[key] - prev[key]) / seconds);
}

function record(ov) {
  const now = Date.now();
  const prev = lastOverview;
  const seconds = prev ? (now - prev.at) / 1000 : 0;
  const ms = ov.message_stats || {};
  const pms = prev ? prev.data.message_stats || {} : null;
  const churn = ov.churn_rates || {};
  const pchurn = prev ? prev.data.churn_rates || {} : null;
  history.t.push(now);
  history.ready.push((ov.queue_totals || {}).messages_ready || 0);
  history.unacked.push((ov.queue_totals || {}).messages_unacknowledged || 0);
  history.publish.push(rateFrom(ms, pms, "publish", seconds));
  history.deliver.push(rateFrom(ms, pms, "deliver_get", seconds));
  history.ack.push(rateFrom(ms, pms, "ack", seconds));
  history.conns.push((ov.object_totals || {}).connections || 0);
  history.created.push(rateFrom(churn, pchurn, "connection_created", seconds));
  history.closed.push(rateFrom(churn, pchurn, "connection_closed", seconds));
  trim(history);
  lastOverview = { at: now, data: ov };
}

function trim(samples) {
  for (const k of Object.keys(samples)) {
    if (samples[k].length > HISTORY) samples[k].shift();
  }
}

// Each queue's depth as its page saw it, kept while the console is open.
const queueHistories = new Map();

function recordQueue(q) {
  const key = q.vhost + "\u0000" + q.name;
  if (!queueHistories.has(key)) queueHistories.set(key, { t: [], ready: [], unacked: [] });
  const samples = queueHistories.get(key);
  samples.t.push(Date.now());
  samples.ready.push(q.messages_ready || 0);
  samples.unacked.push(q.messages_unacknowledged || 0);
  trim(samples);
  return samples;
}

// -- pages -----------------------------------------------------------------------------

// A number in a box; "–" when the node does not count it (no message_stats yet).
function total(id, label, value) {
  return h(
    "div",
    { class: "total" },
    h("div", { class: "value", id, text: value === undefined ? "–" : num(value) }),
    h("div", { class: "label", text: label }),
  );
}

async function overviewPage() {
  const ov = await api("GET", "/overview");
  record(ov);
  const qt = ov.queue_totals || {};
  const ot = ov.object_totals || {};
  const ms = ov.message_stats || {};
  return [
    h("h1", { text: "Overview" }),
    h("p", { class: "muted", id: "ov-node" }, [
      ov.node ? "Node " + ov.node : "",
      ov.cluster_name ? " in cluster " + ov.cluster_name : "",
      ov.management_version ? ", version " + ov.management_version : "",
    ]),
    h("h2", { text: "Queued messages" }),
    h(
      "div",
      { class: "totals" },
      total("ov-messages", "Total", qt.messages),
      total("ov-ready", "Ready", qt.messages_ready),
      total("ov-unacked", "Unacked", qt.messages_unacknowledged),
      total("ov-published", "Published (total)", ms.publish),
      total("ov-delivered", "Delivered (total)", ms.deliver_get),
    ),
    h(
      "div",
      { class: "charts" },
      chart(
        "chart-queued",
        "Queued messages",
        history.t,
        [
          { label: "Ready", values: history.ready },
          { label: "Unacked", values: history.unacked },
        ],
        "",
      ),
      chart(
        "chart-messages",
        "Message rates",
        history.t,
        [
          { label: "Publish", values: history.publish },
          { label: "Deliver / get", values: history.deliver },
          { label: "Ack", values: history.ack },
        ],
        "/s",
      ),
      chart(
        "chart-connections",
        "Connections",
        history.t,
        [
          { label: "Open", values: history.conns },
          { label: "Opened/s", values: history.created },
          { label: "Closed/s", values: history.closed },
        ],
        "",
      ),
    ),
    h("h2", { text: "Totals" }),
    h(
      "div",
      { class: "totals" },
      total("ov-connections", "Connections", ot.connections),
      total("ov-channels", "Channels", ot.channels),
      total("ov-queues", "Queues", ot.queues),
      total("ov-exchanges", "Exchanges", ot.exchanges),
      total("ov-consumers", "Consumers", ot.consumers),
    ),
    listeners(ov.listeners),
    counters(ov.counters),
  ];
}

// The node's own counters (`broker status`), which RabbitMQ's overview does not have.
function counters(values) {
  if (!values || typeof values !== "object") return null;
  return [
    h("h2", { text: "Node counters (since start)" }),
    table(
      "counters-table",
      [
        { title: "Counter", value: ([name]) => name.replaceAll("_", " ") },
        { title: "Value", value: ([, v]) => v, show: ([, v]) => num(v), num: true },
      ],
      Object.entries(values),
    ),
  ];
}

function listeners(list) {
  if (!Array.isArray(list) || !list.length) return null;
  return [
    h("h2", { text: "Ports and contexts" }),
    table(
      "listeners",
      [
        { title: "Protocol", value: (l) => l.protocol },
        { title: "Bound to", value: (l) => l.ip_address },
        { title: "Port", value: (l) => l.port, num: true },
      ],
      list,
    ),
  ];
}

function queueLink(q) {
  return h("a", { href: "#/queue/" + enc(q.vhost) + "/" + enc(q.name), text: q.name });
}

function features(q) {
  return [q.durable ? "D" : "", q.auto_delete ? "AD" : "", q.exclusive ? "Excl" : ""]
    .filter(Boolean)
    .join(" ");
}

async function queuesPage() {
  const queues = await pagedList("queues", "/queues");
  const ms = (q) => q.message_stats || {};
  return [
    h("h1", { text: "Queues" }),
    pager("queues", queues),
    table(
      "queues-table",
      [
        { title: "Virtual host", sort: "vhost", value: (q) => q.vhost },
        { title: "Name", sort: "name", value: (q) => q.name, show: queueLink },
        { title: "Features", value: features },
        { title: "Policy", sort: "policy", value: (q) => q.policy || "" },
        { title: "State", sort: "state", value: (q) => q.state || "" },
        {
          title: "Ready",
          sort: "messages_ready",
          value: (q) => q.messages_ready ?? 0,
          show: (q) => num(q.messages_ready),
          num: true,
        },
        {
          title: "Unacked",
          sort: "messages_unacknowledged",
          value: (q) => q.messages_unacknowledged ?? 0,
          show: (q) => num(q.messages_unacknowledged),
          num: true,
        },
        {
          title: "Total",
          sort: "messages",
          value: (q) => q.messages ?? 0,
          show: (q) => num(q.messages),
          num: true,
        },
        {
          title: "Incoming",
          sort: "message_stats.publish_details.rate",
          value: (q) => detail(ms(q), "publish") ?? 0,
          show: (q) => rate(detail(ms(q), "publish")),
          num: true,
        },
        {
          title: "Deliver / get",
          sort: "message_stats.deliver_get_details.rate",
          value: (q) => detail(ms(q), "deliver_get") ?? 0,
          show: (q) => rate(detail(ms(q), "deliver_get")),
          num: true,
        },
        {
          title: "Ack",
          sort: "message_stats.ack_details.rate",
          value: (q) => detail(ms(q), "ack") ?? 0,
          show: (q) => rate(detail(ms(q), "ack")),
          num: true,
        },
        { title: "Consumers", sort: "consumers", value: (q) => q.consumers ?? 0, num: true },
      ],
      queues.items,
      listOf("queues"),
    ),
  ];
}

function addQueueForm() {
  const form = h(
    "form",
    { class: "action", id: "add-queue-form" },
    h("h2", { text: "Add a queue" }),
    h("label", {}, "Virtual host ", h("input", { name: "vhost", value: "/" })),
    h("label", {}, "Name ", h("input", { name: "name", required: true })),
    h("label", {}, h("input", { name: "durable", type: "checkbox", checked: true }), " durable"),
    h("button", { type: "submit", text: "Add queue" }),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    try {
      await api("PUT", "/queues/" + enc(f.vhost.value) + "/" + enc(f.name.value), {
        durable: f.durable.checked,
        auto_delete: false,
        arguments: {},
      });
      flash("Queue " + f.name.value + " declared.", true);
      await refreshNow();
    } catch (e) {
      flash("Declare failed: " + e.message);
    }
  });
  return form;
}

function queuePath(vhost, name) {
  return "/queues/" + enc(vhost) + "/" + enc(name);
}

async function queuePage(vhost, name) {
  const path = queuePath(vhost, name);
  const q = await api("GET", path);
  const bindings = await api("GET", path + "/bindings");
  const ms = q.message_stats || {};
  const samples = recordQueue(q);
  return [
    h("h1", {}, "Queue ", h("span", { id: "queue-name", text: q.name })),
    h("p", { class: "muted" }, "Virtual host " + q.vhost, features(q) ? " · " + features(q) : ""),
    h(
      "div",
      { class: "totals" },
      total("q-ready", "Ready", q.messages_ready),
      total("q-unacked", "Unacked", q.messages_unacknowledged),
      total("q-messages", "Total", q.messages),
      total("q-consumers", "Consumers", q.consumers),
    ),
    h(
      "div",
      { class: "charts" },
      chart(
        "chart-queue",
        "Queued messages",
        samples.t,
        [
          { label: "Ready", values: samples.ready },
          { label: "Unacked", values: samples.unacked },
        ],
        "",
      ),
    ),
    table(
      "queue-details",
      [
        { title: "Incoming", value: () => rate(detail(ms, "publish") ?? 0) },
        { title: "Deliver / get", value: () => rate(detail(ms, "deliver_get") ?? 0) },
        { title: "Ack", value: () => rate(detail(ms, "ack") ?? 0) },
        { title: "Memory", value: () => bytes(q.memory) },
        { title: "Arguments", value: () => args(q.arguments) },
        { title: "Policy", value: () => q.policy || "" },
        {
          title: "Rewind window",
          value: () => {
            const ms = (q.arguments || {})["x-rewind-ms"];
            return ms ? ms / 1000 + " s" : "none";
          },
        },
      ],
      [q],
    ),
    h("h2", { text: "Consumers" }),
    table(
      "queue-consumers",
      [
        { title: "Consumer tag", value: (c) => c.consumer_tag },
        {
          title: "Connection",
          value: (c) => (c.channel_details && c.channel_details.connection_name) || "",
        },
        { title: "Ack required", value: (c) => (c.ack_required ? "yes" : "no") },
        { title: "Prefetch", value: (c) => c.prefetch_count ?? "", num: true },
      ],
      q.consumer_details || [],
    ),
    h("h2", { text: "Bindings" }),
    bindingsTable("queue-bindings", bindings),
  ];
}

// The queue page's actions: made once, so a refresh does not wipe what is being typed.
function queueActions(vhost, name) {
  const path = queuePath(vhost, name);
  return [
    publishForm("publish", vhost, "", name),
    getForm(path),
    rewindForm(vhost, name),
    h(
      "div",
      { class: "action" },
      h("button", {
        id: "purge-button",
        type: "button",
        text: "Purge messages",
        onclick: () => purge(path, name),
      }),
      " ",
      h("button", {
        id: "delete-button",
        class: "danger",
        type: "button",
        text: "Delete queue",
        onclick: () => deleteQueue(path, name),
      }),
    ),
  ];
}

// A form publishing through POST /api/exchanges/{vhost}/{exchange}/publish: to a queue's
// name on the default exchange (`routingKey` given), or with a routing key typed in. Element
// ids start with `prefix`.
function publishForm(prefix, vhost, exchange, routingKey) {
  const fixed = routingKey !== undefined;
  const form = h(
    "form",
    { class: "action", id: prefix + "-form" },
    h("h2", { text: "Publish message" }),
    fixed
      ? h("p", { class: "muted", text: "Default exchange; the queue's name is the routing key." })
      : h("label", {}, "Routing key ", h("input", { name: "key", id: prefix + "-routing-key" })),
    h(
      "label",
      {},
      "Delivery mode ",
      h(
        "select",
        { name: "mode" },
        h("option", { value: "2", text: "2 - persistent" }),
        h("option", { value: "1", text: "1 - non-persistent" }),
      ),
    ),
    h("label", {}, "Headers (JSON) ", h("input", { name: "headers", placeholder: '{"k": "v"}' })),
    h("label", {}, "Payload ", h("textarea", { name: "payload", id: prefix + "-payload" })),
    h("button", { type: "submit", id: prefix + "-button", text: "Publish message" }),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    const properties = { delivery_mode: Number(f.mode.value) };
    if (f.headers.value.trim()) {
      try {
        properties.headers = JSON.parse(f.headers.value);
      } catch (e) {
        flash("Headers are not JSON: " + e.message);
        return;
      }
    }
    try {
      const res = await api("POST", exchangePath(vhost, exchange) + "/publish", {
        properties,
        routing_key: fixed ? routingKey : f.key.value,
        payload: f.payload.value,
        payload_encoding: "string",
      });
      const routed = !res || res.routed !== false;
      flash(routed ? "Message published." : "Message published, but not routed.", true);
      await refreshNow();
    } catch (e) {
      flash("Publish failed: " + e.message);
    }
  });
  return form;
}

function getForm(path) {
  const out = h("div", { id: "get-results" });
  const form = h(
    "form",
    { class: "action", id: "get-form" },
    h("h2", { text: "Get messages" }),
    h(
      "label",
      {},
      "Ack mode ",
      h(
        "select",
        { name: "ackmode" },
        h("option", { value: "ack_requeue_true", text: "Nack message requeue true" }),
        h("option", { value: "ack_requeue_false", text: "Automatic ack" }),
        h("option", { value: "reject_requeue_true", text: "Reject requeue true" }),
        h("option", { value: "reject_requeue_false", text: "Reject requeue false" }),
      ),
    ),
    h("label", {}, "Messages ", h("input", { name: "count", type: "number", min: 1, value: 1 })),
    h("button", { type: "submit", id: "get-button", text: "Get messages" }),
    out,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    try {
      const msgs = await api("POST", path + "/get", {
        count: Number(f.count.value),
        ackmode: f.ackmode.value,
        encoding: "auto",
        truncate: 50000,
      });
      out.replaceChildren(
        msgs.length
          ? table(
              "get-table",
              [
                { title: "Exchange", value: (m) => m.exchange || "(default)" },
                { title: "Routing key", value: (m) => m.routing_key },
                { title: "Redelivered", value: (m) => (m.redelivered ? "yes" : "no") },
                { title: "Properties", value: (m) => args(m.properties) },
                { title: "Encoding", value: (m) => m.payload_encoding },
                {
                  title: "Payload",
                  value: (m) => m.payload,
                  show: (m) => h("pre", { text: m.payload }),
                },
              ],
              msgs,
            )
          : h("p", { class: "muted", text: "Queue is empty." }),
      );
      await refreshNow();
    } catch (e) {
      flash("Get failed: " + e.message);
    }
  });
  return form;
}

// CMQ's rewind (the API's /api/cmq/queues/.../rewind): the messages enqueued since a time,
// those acknowledged and kept by the queue's rewind window included, are consumable again.
function rewindForm(vhost, name) {
  const form = h(
    "form",
    { class: "action", id: "rewind-form" },
    h("h2", { text: "Rewind" }),
    h("p", {
      class: "muted",
      text:
        "Messages enqueued in the last seconds (by this browser's clock) become ready again, " +
        "consumed ones too while the queue keeps them (CMQ's rewindSeconds, x-rewind-ms).",
    }),
    h(
      "label",
      {},
      "Seconds back ",
      h("input", { name: "seconds", type: "number", min: 0, value: 60 }),
    ),
    h("button", { type: "submit", id: "rewind-button", text: "Rewind" }),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const since = Math.floor(Date.now() / 1000) - Number(form.elements.seconds.value);
    try {
      const res = await api("POST", "/cmq" + queuePath(vhost, name) + "/rewind", { since });
      flash("Rewound " + num(res.rewound) + " message(s).", true);
      await refreshNow();
    } catch (e) {
      flash("Rewind failed: " + e.message);
    }
  });
  return form;
}

async function purge(path, name) {
  if (!window.confirm("Purge every ready message of " + name + "?")) return;
  try {
    await api("DELETE", path + "/contents");
    flash("Queue " + name + " purged.", true);
    await refreshNow();
  } catch (e) {
    flash("Purge failed: " + e.message);
  }
}

async function deleteQueue(path, name) {
  if (!window.confirm("Delete queue " + name + "?")) return;
  try {
    await api("DELETE", path);
    flash("Queue " + name + " deleted.", true);
    location.hash = "#/queues";
  } catch (e) {
    flash("Delete failed: " + e.message);
  }
}

function bindingsTable(id, rows) {
  return table(
    id,
    [
      { title: "Virtual host", value: (b) => b.vhost },
      { title: "From", value: (b) => b.source || "(default)" },
      { title: "To", value: (b) => b.destination },
      { title: "Kind", value: (b) => b.destination_type },
      { title: "Routing key", value: (b) => b.routing_key },
      { title: "Arguments", value: (b) => args(b.arguments) },
    ],
    rows,
  );
}

async function exchangesPage() {
  const [exchanges, bindings] = await Promise.all([
    pagedList("exchanges", "/exchanges"),
    api("GET", "/bindings"),
  ]);
  return [
    h("h1", { text: "Exchanges" }),
    pager("exchanges", exchanges),
    table(
      "exchanges-table",
      [
        { title: "Virtual host", sort: "vhost", value: (x) => x.vhost },
        { title: "Name", sort: "name", value: (x) => x.name, show: exchangeLink },
        { title: "Type", sort: "type", value: (x) => x.type },
        {
          title: "Features",
          value: (x) =>
            [x.durable ? "D" : "", x.auto_delete ? "AD" : "", x.internal ? "I" : ""]
              .filter(Boolean)
              .join(" "),
        },
        { title: "Arguments", value: (x) => args(x.arguments) },
        {
          title: "Rate in",
          sort: "message_stats.publish_in_details.rate",
          value: (x) => detail(x.message_stats, "publish_in") ?? 0,
          show: (x) => rate(detail(x.message_stats, "publish_in")),
          num: true,
        },
        {
          title: "Rate out",
          sort: "message_stats.publish_out_details.rate",
          value: (x) => detail(x.message_stats, "publish_out") ?? 0,
          show: (x) => rate(detail(x.message_stats, "publish_out")),
          num: true,
        },
      ],
      exchanges.items,
      listOf("exchanges"),
    ),
    h("h2", { text: "Bindings" }),
    bindingsTable("bindings-table", bindings),
  ];
}

function exchangeLink(x) {
  const name = x.name || "amq.default";
  return h("a", {
    href: "#/exchange/" + enc(x.vhost) + "/" + enc(name),
    text: x.name || "(AMQP default)",
  });
}

function exchangePath(vhost, name) {
  return "/exchanges/" + enc(vhost) + "/" + enc(name || "amq.default");
}

async function exchangePage(vhost, name) {
  const path = exchangePath(vhost, name);
  const [x, from, to] = await Promise.all([
    api("GET", path),
    api("GET", path + "/bindings/source"),
    api("GET", path + "/bindings/destination"),
  ]);
  return [
    h("h1", {}, "Exchange ", h("span", { id: "exchange-name", text: x.name || "(AMQP default)" })),
    h("p", { class: "muted", text: "Virtual host " + x.vhost + " · type " + x.type }),
    table(
      "exchange-details",
      [
        { title: "Durable", value: () => (x.durable ? "yes" : "no") },
        { title: "Auto delete", value: () => (x.auto_delete ? "yes" : "no") },
        { title: "Internal", value: () => (x.internal ? "yes" : "no") },
        { title: "Arguments", value: () => args(x.arguments) },
      ],
      [x],
    ),
    h("h2", { text: "Bindings from this exchange" }),
    bindingsTable("bindings-from", from),
    h("h2", { text: "Bindings to this exchange" }),
    bindingsTable("bindings-to", to),
  ];
}

function exchangeActions(vhost, name) {
  return [publishForm("exchange-publish", vhost, name)];
}

const FILTER_TYPES = { 1: "tags", 2: "routing key" };

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

async function topicsPage() {
  const [topics, subs] = await Promise.all([
    api("GET", "/cmq/topics"),
    api("GET", "/cmq/subscriptions"),
  ]);
  return [
    h("h1", { text: "CMQ topics" }),
    table(
      "topics-table",
      [
        { title: "Virtual host", value: (t) => t.vhost },
        {
          title: "Topic",
          value: (t) => t.name,
          show: (t) => exchangeLink({ vhost: t.vhost, name: t.name }),
        },
        { title: "Filter", value: (t) => FILTER_TYPES[t.filterType] || "" },
        {
          title: "Max message size",
          value: (t) => t.maxMsgSize ?? 0,
          show: (t) => bytes(t.maxMsgSize),
          num: true,
        },
        { title: "Subscriptions", value: (t) => t.subscriptions ?? 0, num: true },
        {
          title: "Created",
          value: (t) => t.createTime ?? 0,
          show: (t) => when(t.createTime * 1000),
        },
      ],
      topics,
    ),
    h("h2", { text: "Subscriptions" }),
    table(
      "subscriptions-table",
      [
        { title: "Virtual host", value: (s) => s.vhost },
        { title: "Topic", value: (s) => s.topic },
        { title: "Subscription", value: (s) => s.name },
        { title: "Protocol", value: (s) => s.protocol || "" },
        { title: "Endpoint", value: (s) => s.endpoint || "" },
        {
          title: "Filter",
          value: (s) => [].concat(s.filterTags || [], s.bindingKeys || []).join(", "),
        },
        {
          title: "Queue",
          value: (s) => s.queue || "",
          show: (s) => (s.queue ? queueLink({ vhost: s.vhost, name: s.queue }) : ""),
        },
        { title: "Retry", value: (s) => s.notifyStrategy || "" },
      ],
      subs,
    ),
  ];
}

function clientProperties(c) {
  const p = c.client_properties || {};
  const shown = Object.entries(p).filter(([k]) => k !== "capabilities");
  if (!shown.length) return h("span", { class: "muted", text: "-" });
  return h(
    "div",
    {},
    shown.map(([k, v]) => h("div", {}, k + ": " + (typeof v === "object" ? JSON.stringify(v) : v))),
  );
}

async function connectionsPage() {
  const conns = await pagedList("connections", "/connections");
  return [
    h("h1", { text: "Connections" }),
    pager("connections", conns),
    table(
      "connections-table",
      [
        { title: "Name", sort: "name", value: (c) => c.name },
        { title: "Protocol", sort: "protocol", value: (c) => c.protocol || "" },
        { title: "User", sort: "user", value: (c) => c.user || "" },
        { title: "Virtual host", sort: "vhost", value: (c) => c.vhost || "" },
        {
          title: "Peer",
          sort: "peer_host",
          value: (c) => (c.peer_host || "") + (c.peer_port ? ":" + c.peer_port : ""),
        },
        { title: "TLS", sort: "ssl", value: (c) => (c.ssl ? "yes" : "no") },
        { title: "Channels", sort: "channels", value: (c) => c.channels ?? "", num: true },
        { title: "State", sort: "state", value: (c) => c.state || "" },
        {
          title: "Client",
          value: (c) => JSON.stringify(c.client_properties || {}),
          show: clientProperties,
        },
        {
          title: "From client",
          sort: "recv_oct_details.rate",
          value: (c) => detail(c, "recv_oct") ?? 0,
          show: (c) => byteRate(detail(c, "recv_oct")),
          num: true,
        },
        {
          title: "To client",
          sort: "send_oct_details.rate",
          value: (c) => detail(c, "send_oct") ?? 0,
          show: (c) => byteRate(detail(c, "send_oct")),
          num: true,
        },
        {
          title: "",
          value: () => "",
          show: (c) =>
            h("button", {
              type: "button",
              class: "danger close-connection",
              "data-name": c.name,
              text: "Close",
              onclick: () => closeConnection(c.name),
            }),
        },
      ],
      conns.items,
      listOf("connections"),
    ),
  ];
}

async function closeConnection(name) {
  if (!window.confirm("Close connection " + name + "?")) return;
  try {
    await api("DELETE", "/connections/" + enc(name));
    flash("Connection " + name + " closed.", true);
    await refreshNow();
  } catch (e) {
    flash("Close failed: " + e.message);
  }
}

async function usersPage() {
  const [users, perms] = await Promise.all([api("GET", "/users"), api("GET", "/permissions")]);
  return [
    h("h1", { text: "Users" }),
    table(
      "users-table",
      [
        { title: "Name", value: (u) => u.name },
        { title: "Tags", value: (u) => tags(u.tags) },
        { title: "Has password", value: (u) => (u.password_hash ? "yes" : "no") },
      ],
      users,
    ),
    h("h2", { text: "Permissions" }),
    table(
      "permissions-table",
      [
        { title: "User", value: (p) => p.user },
        { title: "Virtual host", value: (p) => p.vhost },
        { title: "Configure", value: (p) => p.configure },
        { title: "Write", value: (p) => p.write },
        { title: "Read", value: (p) => p.read },
      ],
      perms,
    ),
  ];
}

async function vhostsPage() {
  const vhosts = await api("GET", "/vhosts");
  return [
    h("h1", { text: "Virtual hosts" }),
    table(
      "vhosts-table",
      [
        { title: "Name", value: (v) => v.name },
        { title: "Description", value: (v) => v.description || "" },
        { title: "Tags", value: (v) => tags(v.tags) },
        { title: "Ready", value: (v) => v.messages_ready ?? 0, num: true },
        { title: "Unacked", value: (v) => v.messages_unacknowledged ?? 0, num: true },
        { title: "Total", value: (v) => v.messages ?? 0, num: true },
        { title: "Tracing", value: (v) => (v.tracing ? "on" : "off") },
      ],
      vhosts,
    ),
  ];
}

async function keysPage() {
  const keys = await api("GET", "/cmq/keys");
  return [
    h("h1", { text: "CMQ keys" }),
    table(
      "keys-table",
      [
        { title: "Secret id", value: (k) => k.secret_id },
        { title: "Virtual host", value: (k) => k.vhost },
        { title: "Created", value: (k) => k.created_at ?? 0, show: (k) => when(k.created_at) },
      ],
      keys,
    ),
  ];
}

async function policiesPage() {
  const policies = await api("GET", "/policies");
  return [
    h("h1", { text: "Policies" }),
    table(
      "policies-table",
      [
        { title: "Virtual host", value: (p) => p.vhost },
        { title: "Name", value: (p) => p.name },
        { title: "Pattern", value: (p) => p.pattern },
        { title: "Apply to", value: (p) => p["apply-to"] },
        { title: "Definition", value: (p) => args(p.definition) },
        { title: "Priority", value: (p) => p.priority ?? 0, num: true },
      ],
      policies,
    ),
  ];
}

// -- message trace ----------------------------------------------------------------------

// What is traced (GET /api/trace); the forms below turn it on and off and query it.
async function tracePage() {
  const settings = await api("GET", "/trace");
  return [
    h("h1", { text: "Message trace" }),
    h("p", {
      class: "muted",
      text:
        "While trace is on for a vhost or a queue, every step of each message's life there " +
        "is recorded: published (by whom, routed where), delivered, acknowledged, returned, " +
        "rejected, expired, dead-lettered. The firehose copies messages to amq.rabbitmq.trace.",
    }),
    table(
      "trace-settings",
      [
        { title: "Virtual host", value: (t) => t.vhost },
        { title: "Kind", value: (t) => t.kind },
        { title: "Queue", value: (t) => t.queue || "(the whole vhost)" },
      ],
      settings,
    ),
  ];
}

const STEP_FIELDS = new Set(["event", "vhost", "queue", "seq", "time", "id"]);

// "2026-12-02 13:32:56.271" in the browser's time zone: steps are ms apart.
function stepTime(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  const date = d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate());
  const time = two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  return date + " " + time + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function stepsTable(steps, lookUp) {
  return table(
    "trace-steps",
    [
      { title: "Time", value: (s) => s.time, show: (s) => stepTime(s.time) },
      { title: "Event", value: (s) => s.event },
      { title: "Queue", value: (s) => s.queue || "" },
      {
        title: "Message",
        value: (s) => s.id || "",
        show: (s) =>
          s.id
            ? h("a", { href: "#/trace", text: s.id, onclick: (ev) => lookUp(ev, s.vhost, s.id) })
            : "",
      },
      {
        title: "Details",
        value: (s) =>
          args(Object.fromEntries(Object.entries(s).filter(([k]) => !STEP_FIELDS.has(k)))),
      },
    ],
    steps,
  );
}

function field(label, attrs) {
  return h("label", {}, label + " ", h("input", attrs));
}

function traceActions() {
  const results = h("div", { id: "trace-results" });
  const query = async (path, what) => {
    try {
      const steps = await api("GET", path);
      results.replaceChildren(h("h2", { text: what }), stepsTable(steps, lookUp));
    } catch (e) {
      flash("Trace query failed: " + e.message);
    }
  };

  const switches = h(
    "form",
    { class: "action", id: "trace-switch-form" },
    h("h2", { text: "Turn trace on or off" }),
    field("Virtual host", { name: "vhost", value: "/" }),
    field("Queue (empty: the whole vhost)", { name: "queue", id: "trace-switch-queue" }),
    h(
      "label",
      {},
      "Kind ",
      h(
        "select",
        { name: "kind" },
        h("option", { value: "trace", text: "message trace" }),
        h("option", { value: "firehose", text: "firehose (amq.rabbitmq.trace)" }),
      ),
    ),
    h("button", { type: "submit", name: "on", id: "trace-on", text: "Turn on" }),
    " ",
    h("button", { type: "submit", name: "off", id: "trace-off", text: "Turn off" }),
  );
  switches.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = switches.elements;
    const enabled = ev.submitter !== f.off;
    const what = { kind: f.kind.value, enabled };
    if (f.queue.value) what.queue = f.queue.value;
    try {
      await api("PUT", "/trace/" + enc(f.vhost.value), what);
      flash("Trace turned " + (enabled ? "on." : "off."), true);
      await refreshNow();
    } catch (e) {
      flash("Trace change failed: " + e.message);
    }
  });

  const byMessage = h(
    "form",
    { class: "action", id: "trace-message-form" },
    h("h2", { text: "One message's life" }),
    field("Virtual host", { name: "vhost", value: "/" }),
    field("Trace id or message_id", { name: "id", id: "trace-message-id", required: true }),
    h("button", { type: "submit", id: "trace-message-button", text: "Show" }),
  );
  byMessage.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = byMessage.elements;
    const path = "/trace/" + enc(f.vhost.value) + "/messages/" + enc(f.id.value);
    query(path, "Message " + f.id.value);
  });
  function lookUp(ev, vhost, id) {
    ev.preventDefault();
    byMessage.elements.vhost.value = vhost;
    byMessage.elements.id.value = id;
    byMessage.requestSubmit();
  }

  const byQueue = h(
    "form",
    { class: "action", id: "trace-queue-form" },
    h("h2", { text: "A queue's steps" }),
    field("Virtual host", { name: "vhost", value: "/" }),
    field("Queue", { name: "queue", id: "trace-queue-name", required: true }),
    field("Minutes back", { name: "minutes", type: "number", min: 1, value: 60 }),
    h("button", { type: "submit", id: "trace-queue-button", text: "Show" }),
  );
  byQueue.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = byQueue.elements;
    const since = Date.now() - Number(f.minutes.value) * 60000;
    const path = "/trace/" + enc(f.vhost.value) + "/queues/" + enc(f.queue.value);
    query(path + "?since=" + since, "Queue " + f.queue.value);
  });
  return [switches, byMessage, byQueue, results];
}

// -- routing, polling, login ------------------------------------------------------------

// Each page: `live` (re-read on every refresh) and optional `actions` (forms made once).
const PAGES = {
  overview: { live: overviewPage },
  queues: { live: queuesPage, actions: () => [addQueueForm()], filter: true },
  queue: { live: queuePage, actions: queueActions },
  exchanges: { live: exchangesPage, filter: true },
  exchange: { live: exchangePage, actions: exchangeActions },
  topics: { live: topicsPage },
  connections: { live: connectionsPage, filter: true },
  users: { live: usersPage },
  vhosts: { live: vhostsPage },
  keys: { live: keysPage },
  policies: { live: policiesPage },
  trace: { live: tracePage, actions: traceActions },
};

// the list page a detail page belongs to (for the highlighted menu entry)
const PARENTS = { queue: "queues", exchange: "exchanges" };

let shown = 0; // which show() the page belongs to: a late answer for a page left is dropped

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const name = PAGES[parts[0]] ? parts[0] : "overview";
  return { name, params: parts.slice(1) };
}

function currentInterval() {
  return Number(document.getElementById("refresh").value) || 5000;
}

async function refreshNow() {
  if (currentRefresh) await currentRefresh();
}

function schedule() {
  clearTimeout(refreshTimer);
  const every = Number(document.getElementById("refresh").value);
  if (every > 0 && currentRefresh) refreshTimer = setTimeout(tick, every);
}

async function tick() {
  await refreshNow();
  schedule();
}

function show() {
  const { name, params } = route();
  const mine = ++shown;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === (PARENTS[name] || name));
  }
  const page = document.getElementById("page");
  const live = h("div", { id: "live" }, h("p", { class: "muted", text: "Loading…" }));
  const actions = PAGES[name].actions;
  page.dataset.page = name;
  delete page.dataset.loaded;
  page.replaceChildren(
    PAGES[name].filter ? listTools(name) : "",
    live,
    actions ? h("div", { id: "actions" }, actions(...params)) : "",
  );
  let calls = 0; // only the latest refresh renders: a slower, older answer is dropped
  currentRefresh = async () => {
    const call = ++calls;
    let nodes;
    try {
      nodes = await PAGES[name].live(...params);
    } catch (e) {
      if (mine !== shown || call !== calls) return;
      if (loggedOut(e)) {
        logout("Your credentials were refused: " + e.message);
        return;
      }
      nodes = [h("p", { class: "error", id: "page-error", text: "Could not load: " + e.message })];
    }
    if (mine !== shown || call !== calls) return;
    live.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
    page.dataset.loaded = String(Date.now());
  };
  flash("", true);
  tick();
}

// RabbitMQ answers 401 both to credentials it refuses and to a user its tags do not allow
// the call: only the first ends the session, the second is shown where it happened.
function loggedOut(e) {
  return e.status === 401 && /^(Login failed|Not management user)/.test(e.message);
}

function showLogin(message) {
  clearTimeout(refreshTimer);
  currentRefresh = null;
  shown += 1;
  document.getElementById("nav").hidden = true;
  document.getElementById("session").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("login-form").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

function logout(message) {
  sessionStorage.removeItem(AUTH_KEY);
  sessionStorage.removeItem(AUTH_KEY + "-user");
  showLogin(message);
}

async function login(ev) {
  ev.preventDefault();
  const user = document.getElementById("login-user").value;
  const password = document.getElementById("login-pass").value;
  sessionStorage.setItem(AUTH_KEY, basicToken(user, password));
  try {
    await api("GET", "/whoami"); // RabbitMQ's check of the credentials
  } catch (e) {
    sessionStorage.removeItem(AUTH_KEY);
    const why =
      e.message === "Login failed"
        ? "Login failed: wrong user name or password."
        : "Login failed: " + e.message;
    showLogin(why);
    return;
  }
  sessionStorage.setItem(AUTH_KEY + "-user", user);
  start();
}

function start() {
  document.getElementById("login-form").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("session").hidden = false;
  const user = sessionStorage.getItem(AUTH_KEY + "-user") || "";
  document.getElementById("whoami").textContent = "User " + user;
  show();
}

document.getElementById("login-form").addEventListener("submit", login);
document.getElementById("logout").addEventListener("click", () => logout(""));
document.getElementById("refresh").addEventListener("change", schedule);
window.addEventListener("hashchange", () => {
  if (sessionStorage.getItem(AUTH_KEY)) show();
});
if (sessionStorage.getItem(AUTH_KEY)) start();
else showLogin("");
