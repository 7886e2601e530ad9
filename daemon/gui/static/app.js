// dizzy's status page: renders the daemon's live state (Server-Sent Events from
// /api/live) and posts the two forms.  Plain DOM, no framework, no build step.
// Every value from the daemon (peer names, paths...) goes in through textContent:
// a peer chooses its own name, so nothing it sends is ever parsed as HTML.
"use strict";

const csrf = document.querySelector('meta[name="dizzy-csrf"]').content;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function ago(when, now) {
  if (!when) return "never";
  const s = Math.max(0, Math.round(now - when));
  if (s < 5) return "now";
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  return new Date(when * 1000).toLocaleString();
}

function bar(fraction) {
  const pct = Math.max(0, Math.min(100, fraction * 100));
  const done = el("span", {});
  done.style.width = pct.toFixed(1) + "%";  // a style attribute would break the CSP
  return el("span", { class: "bar" }, done);
}

function fill(tableId, emptyId, rows) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
  $(tableId).hidden = rows.length === 0;
  $(emptyId).hidden = rows.length !== 0;
}

function renderPeers(state) {
  fill("peers", "peers-empty", state.peers.map((p) => el("tr", { "data-peer-id": p.id },
    el("td", {}, p.name || "-"),
    el("td", {}, el("span", { class: "peer-state badge " + (p.online ? "on" : "off") },
      p.online ? "online" : "offline")),
    el("td", {}, p.address || "-"),
    el("td", {}, p.online ? "now" : ago(p.last_seen, state.time)),
    el("td", {}, el("code", {}, p.id)))));
}

// The most a folder needed since its sync began: progress is measured against it
// (the scanned byte count only catches up at the next scan).
const peakNeed = {};

function folderSync(f) {
  if (f.state === "pending") return el("span", { class: "folder-sync badge warn" },
    "offered by a device; share it here to join");
  if (f.need_bytes === 0) delete peakNeed[f.name];
  else peakNeed[f.name] = Math.max(peakNeed[f.name] || 0, f.need_bytes);
  if (f.in_sync) return el("span", { class: "folder-sync badge on" }, "in sync");
  const total = Math.max(peakNeed[f.name] || 0, f.bytes + f.need_bytes);
  const fraction = total ? 1 - f.need_bytes / total : 0;
  return el("span", { class: "folder-sync" }, bar(fraction),
    `${Math.floor(fraction * 100)}%` + (f.need_bytes ? ` (${bytes(f.need_bytes)} to fetch)`
      : ` (${f.state})`));
}

function renderFolders(state) {
  fill("folders", "folders-empty", state.folders.map((f) => el("tr", { "data-folder": f.name },
    el("td", {}, f.name),
    el("td", { class: "folder-state" },
      el("span", { class: "badge " + (f.state === "error" ? "bad" : "off") }, f.state),
      f.error ? el("div", { class: "error" }, f.error) : ""),
    el("td", {}, f.files),
    el("td", {}, bytes(f.bytes)),
    el("td", {}, folderSync(f)),
    el("td", {}, el("code", {}, f.path || "-")))));
}

function renderTransfers(state) {
  fill("transfers", "transfers-empty", state.transfers.map((t) => el("tr",
    { "data-object-id": t.object_id },
    el("td", {}, t.what || t.object_id.slice(0, 16) + "…"),
    el("td", { class: "transfer-progress" }, t.total ? bar(t.done / t.total) : "",
      `${bytes(t.done)} of ${bytes(t.total)}`),
    el("td", { class: "transfer-rate" }, bytes(Math.round(t.rate || 0)) + "/s"))));
}

function renderProblems(state) {
  const items = state.problems.map((p) => el("li", { "data-type": p.type },
    el("time", {}, new Date(p.time * 1000).toLocaleTimeString()), p.text,
    p.repeats > 1 ? ` (${p.repeats} times)` : ""));
  $("problems").replaceChildren(...items);
  $("problems-empty").hidden = items.length !== 0;
}

function renderPairing(pairing) {
  const box = $("pair-status");
  const waiting = pairing.state === "waiting" || pairing.state === "starting";
  $("pair-start").disabled = waiting;
  $("pair-cancel").hidden = !waiting;
  box.className = "";
  if (pairing.state === "waiting") {
    box.replaceChildren("Code: ", el("span", { class: "code", id: "pair-code" }, pairing.code),
      " — on the other device run ", el("code", {}, "dizzy pair " + pairing.code));
  } else if (pairing.state === "starting") {
    box.replaceChildren("Opening an invitation…");
  } else if (pairing.state === "paired") {
    box.className = "ok";
    box.replaceChildren(`paired with ${pairing.name} (${pairing.device_id})`);
  } else if (pairing.state === "failed") {
    box.className = "error";
    box.replaceChildren("pairing failed: " + pairing.error);
  } else {
    box.replaceChildren();
  }
}

function render(state) {
  $("device-name").textContent = state.device.name;
  $("device-id").textContent = state.device.device_id;
  document.title = "dizzy — " + state.device.name;
  renderPeers(state);
  renderFolders(state);
  renderTransfers(state);
  renderProblems(state);
  renderPairing(state.pairing);
}

function connect() {
  const source = new EventSource("/api/live");
  const badge = $("connection");
  source.addEventListener("state", (event) => {
    badge.textContent = "live";
    badge.className = "badge on";
    render(JSON.parse(event.data));
  });
  source.onerror = () => {
    // EventSource reconnects by itself; the badge says the page is not live meanwhile.
    badge.textContent = "daemon unreachable";
    badge.className = "badge bad";
  };
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", "x-dizzy-csrf": csrf },
    body: JSON.stringify(body),
  });
  let data = {};
  try { data = await response.json(); } catch (e) { data = { error: response.statusText }; }
  return { ok: response.ok, data };
}

$("share-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("share-status");
  status.className = "";
  status.textContent = "sharing…";
  const { ok, data } = await post("/api/share", {
    name: $("share-name").value, path: $("share-path").value, mode: $("share-mode").value,
  });
  status.className = ok ? "ok" : "error";
  status.textContent = ok ? `sharing ${data.name} (${data.path})` : data.error;
});

$("pair-start").addEventListener("click", async () => {
  renderPairing({ state: "starting" });
  const { data } = await post("/api/pair", {});
  renderPairing(data.state ? data : { state: "failed", error: data.error });
});

$("pair-cancel").addEventListener("click", async () => {
  const { ok, data } = await post("/api/pair/cancel", {});
  if (!ok) renderPairing({ state: "failed", error: data.error });
});

connect();
