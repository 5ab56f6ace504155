// LoRAStack's rows, and the preview shown when hovering a LoRA name.
//
// LoRAStack keeps one STRING widget, `loras` (one LoRA per line: lora_name[:strength[:te_strength]],
// a line starting with # is off; docs/CONTRACT.md). The editor shows it as rows, like rgthree's Power
// Lora Loader: a toggle, a LoRA name (with search over subfolders), a strength, a text-encoder
// strength that folds away, and "+ Add LoRA". Every edit writes the rows back into `loras`, which is
// what the workflow saves and the prompt sends: API workflows, --set and other clients stay plain text.
//
// Hovering a LoRA in any LoRA list (a combo's menu, a row's name) shows its preview image and trigger
// words, from the pack routes /loragraph/lora_preview and /loragraph/lora_info.

import { api } from "../../../scripts/api.js";

/** `loras` text -> rows: {on, name, strength, te} (te null: as strength). Lines that do not parse stay. */
export function parseRows(text) {
  const rows = [];
  for (const raw of String(text ?? "").split("\n")) {
    let line = raw.trim();
    if (!line) continue;
    const on = !line.startsWith("#");
    if (!on) line = line.replace(/^#+\s*/, "");
    const parts = line.split(":");
    const number = (s, d) => (s === undefined || s.trim() === "" || Number.isNaN(Number(s)) ? d : Number(s));
    const strength = number(parts[1], 1.0);
    rows.push({ on, name: parts[0].trim(), strength, te: parts.length > 2 ? number(parts[2], null) : null });
  }
  return rows;
}

/** rows -> `loras` text, the pinned form: the strength always, the text-encoder one when it differs. */
export function formatRows(rows) {
  return rows
    .filter((r) => r.name)
    .map((r) => {
      const te = r.te === null || r.te === undefined || r.te === r.strength ? "" : `:${r.te}`;
      return `${r.on ? "" : "# "}${r.name}:${r.strength}${te}`;
    })
    .join("\n");
}

// -- the LoRA list and the hover card ----------------------------------------------------------------

let loraList = null;
let loraListAt = 0;

export async function loraNames() {
  if (loraList && Date.now() - loraListAt < 30_000) return loraList;
  try {
    const res = await api.fetchApi("/loragraph/loras");
    loraList = res.ok ? await res.json() : [];
  } catch (e) {
    loraList = [];
  }
  loraListAt = Date.now();
  return loraList;
}

const infoCache = new Map();

async function loraInfo(name) {
  if (!infoCache.has(name)) {
    infoCache.set(name, api.fetchApi(`/loragraph/lora_info?name=${encodeURIComponent(name)}`)
      .then((r) => (r.ok ? r.json() : {}))
      .catch(() => ({})));
  }
  return infoCache.get(name);
}

let card = null;

function hoverCard() {
  if (card) return card;
  card = document.createElement("div");
  card.className = "loragraph-lora-card";
  card.dataset.loragraph = "lora-card";
  Object.assign(card.style, {
    position: "fixed", zIndex: 100000, display: "none", pointerEvents: "none", maxWidth: "260px",
    background: "#222", color: "#ddd", border: "1px solid #555", borderRadius: "6px", padding: "6px",
    font: "12px sans-serif",
  });
  document.body.appendChild(card);
  return card;
}

/** Show `name`'s preview image and trigger words near (x, y); hideCard() hides it. */
export async function showCard(name, x, y) {
  const el = hoverCard();
  el.dataset.name = name;
  el.replaceChildren();
  const title = document.createElement("div");
  title.textContent = name;
  title.style.fontWeight = "bold";
  el.appendChild(title);
  Object.assign(el.style, { left: `${x + 16}px`, top: `${y + 8}px`, display: "block" });
  const info = await loraInfo(name);
  if (el.dataset.name !== name) return; // the pointer moved on
  if (info.preview) {
    const img = document.createElement("img");
    img.src = api.apiURL(`/loragraph/lora_preview?name=${encodeURIComponent(name)}`);
    img.dataset.loragraph = "lora-preview";
    Object.assign(img.style, { display: "block", maxWidth: "240px", maxHeight: "240px", marginTop: "4px" });
    el.appendChild(img);
  }
  const words = document.createElement("div");
  words.dataset.loragraph = "trigger-words";
  words.textContent = info.trigger_words?.length ? `trigger words: ${info.trigger_words.join(", ")}` : "no trigger words";
  words.style.marginTop = "4px";
  el.appendChild(words);
}

export function hideCard() {
  if (card) {
    card.style.display = "none";
    card.dataset.name = "";
  }
}

/** Hovering an entry of any combo menu that names a LoRA file shows its card. */
export function installComboHover() {
  document.addEventListener("mouseover", async (event) => {
    const entry = event.target?.closest?.(".litecontextmenu .litemenu-entry");
    if (!entry) return;
    const name = (entry.dataset?.value ?? entry.textContent ?? "").trim();
    const names = await loraNames();
    if (names.includes(name)) showCard(name, event.clientX, event.clientY);
    else hideCard();
  });
  document.addEventListener("mousedown", hideCard, true);
}

// -- LoRAStack's rows ---------------------------------------------------------------------------------

function input(type, value, attrs = {}) {
  const el = document.createElement("input");
  el.type = type;
  if (type === "checkbox") el.checked = value;
  else el.value = value;
  Object.assign(el, attrs);
  el.style.background = "#111";
  el.style.color = "#ddd";
  el.style.border = "1px solid #444";
  return el;
}

/**
 * Replace `loras`' text box by rows on `node`. `lorasWidget` stays the serialized value; `addPanel`
 * makes the DOM widget (loragraph.js's helper).
 */
export function setupStack(node, lorasWidget, addPanel, onResize) {
  const { element } = addPanel(node, "lora_rows", "rows", 60, 600);
  element.dataset.loragraph = "lora-rows";
  const listId = `loragraph-loras-${node.id}`;
  const datalist = document.createElement("datalist");
  datalist.id = listId;
  loraNames().then((names) => {
    datalist.replaceChildren(...names.map((n) => Object.assign(document.createElement("option"), { value: n })));
  });
  const box = lorasWidget.inputEl ?? lorasWidget.element;
  if (box) box.style.display = "none"; // the rows edit it; it is still what is saved and sent
  lorasWidget.computeSize = () => [0, -4];
  lorasWidget.hidden = true;

  let rows = parseRows(lorasWidget.value);
  let shownFor = lorasWidget.value;

  const write = () => {
    const text = formatRows(rows);
    shownFor = text;
    lorasWidget.value = text;
    lorasWidget.callback?.(text);
    node.setDirtyCanvas?.(true, true);
  };

  const render = () => {
    element.replaceChildren(datalist);
    rows.forEach((row, i) => {
      const line = document.createElement("div");
      line.dataset.loragraph = "lora-row";
      line.style.display = "flex";
      line.style.gap = "4px";
      line.style.alignItems = "center";
      line.style.margin = "2px 0";
      const toggle = input("checkbox", row.on, { title: "on / off" });
      toggle.dataset.field = "on";
      toggle.addEventListener("change", () => { row.on = toggle.checked; write(); });
      const name = input("text", row.name, { placeholder: "LoRA file (type to search)", title: "LoRA file" });
      name.dataset.field = "name";
      name.setAttribute("list", listId);
      name.style.flex = "1";
      name.addEventListener("change", () => { row.name = name.value.trim(); write(); });
      name.addEventListener("mouseenter", (e) => row.name && showCard(row.name, e.clientX, e.clientY));
      name.addEventListener("mouseleave", hideCard);
      const strength = input("number", row.strength, { step: 0.05, title: "strength" });
      strength.dataset.field = "strength";
      strength.style.width = "56px";
      strength.addEventListener("change", () => { row.strength = Number(strength.value); write(); });
      const fold = document.createElement("button");
      fold.textContent = row.te === null ? "TE ▸" : "TE ▾";
      fold.title = "text-encoder strength (folded: the same as strength)";
      fold.dataset.field = "fold";
      const te = input("number", row.te ?? row.strength, { step: 0.05, title: "text-encoder strength" });
      te.dataset.field = "te";
      te.style.width = "56px";
      te.style.display = row.te === null ? "none" : "";
      fold.addEventListener("click", () => {
        row.te = row.te === null ? row.strength : null;
        write();
        render();
      });
      te.addEventListener("change", () => { row.te = Number(te.value); write(); });
      const remove = document.createElement("button");
      remove.textContent = "✕";
      remove.title = "remove this LoRA";
      remove.dataset.field = "remove";
      remove.addEventListener("click", () => { rows.splice(i, 1); write(); render(); });
      line.append(toggle, name, strength, fold, te, remove);
      element.appendChild(line);
    });
    const add = document.createElement("button");
    add.textContent = "+ Add LoRA";
    add.dataset.loragraph = "add-lora";
    add.addEventListener("click", () => {
      rows.push({ on: true, name: "", strength: 1.0, te: null });
      render();
    });
    element.appendChild(add);
    element.loragraphHeight = 28 * rows.length + 30;
    onResize?.(element);
  };

  // A value set from outside (a loaded workflow, undo, paste) redraws the rows.
  node.loragraph.syncRows = () => {
    if (lorasWidget.value !== shownFor) {
      shownFor = lorasWidget.value;
      rows = parseRows(lorasWidget.value);
      render();
    }
  };
  render();
}
