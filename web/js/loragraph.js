// loragraph's editor extension, for ComfyUI's frontend inside ComfyUI and under `loragraph serve`.
//
// ComfyUI serves ./web as /extensions/<pack folder>/, so this file is /extensions/<pack>/js/loragraph.js
// and the frontend's modules (/scripts/app.js, /scripts/api.js) are three levels up.
//
// - LoadLoRA shows its file's summary (format, rank, alpha, base model, trigger words), fetched from
//   the pack route /loragraph/lora_info and refreshed when lora_name changes;
// - SetAdapterWeights, FuseLoRA, DeleteAdapters, SetLoRADevice and SaveLoRA get a button listing the
//   adapters loaded upstream, which fills their adapter_names (adapter_name) widget;
// - LoRAInfo shows its JSON as a table once it has run; LoRA nodes show the warnings they report;
// - FuseLoRA nodes, and the LoadLoRA nodes whose adapters they fuse, carry a "fused" badge;
// - ScheduleAdapterWeights shows its strength curve as a small plot, redrawn as the keyframes are typed;
// - LoRAStack edits its `loras` text as rows, and hovering a LoRA name shows its preview (stack.js);
// - under `loragraph serve` an empty editor starts from a small working graph, not ComfyUI's
//   default one (whose core nodes the headless server does not have).
//
// The widgets added here are never serialized: saved workflows and API prompts stay exactly as
// the nodes define them.

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { fusedBadges, splitNames, upstreamAdapters, widgetValue } from "./adapters.js";
import { drawCurve } from "./curve.js";
import { installComboHover, setupStack } from "./stack.js";
import { installStyle, panel, renderInfo, renderSummary, renderWarnings } from "./view.js";

const EXTENSION = "loragraph.editor";
const PACK_NODES = new Set([
  "LoadPipeline", "LoadLoRA", "SetAdapterWeights", "ScheduleAdapterWeights", "FuseLoRA", "UnfuseLoRA", "TextEncoderLoRAToggle",
  "DeleteAdapters", "UnloadLoRA", "SetLoRADevice", "SaveLoRA", "LoRAInfo", "Sampler", "LoRAStack", "PromptLoRAs",
]);
// node class -> the widget the adapter picker fills, and whether it takes a list
// (and what an empty value means there, for the "clear" entry)
const PICKERS = {
  SetAdapterWeights: { widget: "adapter_names", many: true, empty: "every loaded adapter" },
  FuseLoRA: { widget: "adapter_names", many: true, empty: "the active adapters" },
  DeleteAdapters: { widget: "adapter_names", many: true, empty: "none" },
  SetLoRADevice: { widget: "adapter_names", many: true, empty: "every adapter" },
  SaveLoRA: { widget: "adapter_name", many: false, empty: null },
  ScheduleAdapterWeights: { widget: "adapter_name", many: false, empty: null },
};
const SUMMARY_TTL_MS = 30_000;
const BADGE_REFRESH_MS = 250;

// -- widgets ------------------------------------------------------------------------------------

/**
 * A read-only DOM panel at the bottom of the node; never saved, never sent to the server.
 * It asks for the height its content needs (between minHeight and maxHeight; it scrolls beyond).
 */
function addPanel(node, name, kind, minHeight, maxHeight) {
  const element = panel(kind);
  if (typeof node.addDOMWidget !== "function") return { element, widget: null };
  // As tall as the content, up to maxHeight, and no taller than the room above the node below (then it scrolls).
  const wanted = () => Math.max(minHeight,
    Math.min(maxHeight, element.loragraphCap ?? Infinity, (element.loragraphHeight ?? 0) + 10));
  const widget = node.addDOMWidget(name, kind, element, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: wanted,
    getMaxHeight: () => maxHeight,
  });
  widget.serialize = false;
  return { element, widget };
}

/** How tall `node` may grow before it covers a node below it (one that overlaps it horizontally). */
export function roomBelow(node, width) {
  const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const [x0, x1] = [node.pos[0], node.pos[0] + width];
  let room = Infinity;
  for (const other of node.graph?._nodes ?? []) {
    if (other === node || other.pos[1] <= node.pos[1]) continue;
    if (other.pos[0] >= x1 || other.pos[0] + other.size[0] <= x0) continue;
    room = Math.min(room, other.pos[1] - title - 10 - node.pos[1]);
  }
  return room;
}

/** Make room for a panel's new content: measured once laid out, else estimated from its lines. */
function grow(node, element, minWidth = 0) {
  const fit = () => {
    const children = [...element.children];
    const laidOut = element.isConnected && element.offsetParent !== null;
    element.loragraphHeight = laidOut
      ? children.reduce((sum, child) => sum + child.offsetHeight, 0)
      : children.reduce((sum, child) => sum + (child.tagName === "TABLE" ? child.rows.length * 16 : 15), 0);
    element.loragraphCap = undefined;
    const [fullWidth, full] = node.computeSize();
    const width = Math.max(node.size[0], fullWidth, minWidth);
    const room = roomBelow(node, width);
    if (full > room) element.loragraphCap = element.loragraphHeight + 10 - (full - room); // the rest scrolls
    const [, h] = node.computeSize();
    node.setSize([width, h]); // as tall as the content (or the room), no blank below
    node.setDirtyCanvas?.(true, true);
  };
  fit();
  requestAnimationFrame(() => requestAnimationFrame(fit)); // again once the browser has laid it out
}

function setWidget(node, name, value) {
  const widget = node.widgets?.find((w) => w.name === name);
  if (!widget) return;
  widget.value = value;
  widget.callback?.(value);
  node.setDirtyCanvas?.(true, true);
  app.graph?.change?.();
}

// -- LoadLoRA: the file's summary ---------------------------------------------------------------

const summaryCache = new Map(); // lora_name -> {at, summary}

async function fetchSummary(name) {
  const hit = summaryCache.get(name);
  if (hit && Date.now() - hit.at < SUMMARY_TTL_MS) return hit.summary;
  let summary;
  try {
    const res = await api.fetchApi(`/loragraph/lora_info?name=${encodeURIComponent(name)}`);
    summary = await res.json().catch(() => ({}));
    if (!res.ok) summary = { error: summary?.error ?? `the server answered ${res.status}` };
  } catch (e) {
    summary = { error: `could not ask the server: ${e}` };
  }
  if (!summary.error) summaryCache.set(name, { at: Date.now(), summary });
  return summary;
}

async function refreshSummary(node) {
  const name = widgetValue(node, "lora_name");
  if (!node.loragraph?.summary || name === node.loragraph.summaryFor) return;
  node.loragraph.summaryFor = name;
  const target = node.loragraph.summary;
  if (!name) {
    renderSummary(target, null);
    return;
  }
  const summary = await fetchSummary(name);
  if (node.loragraph.summaryFor !== name) return; // the combo moved on while we asked
  node.loragraph.lastSummary = summary;
  renderSummary(target, summary);
  grow(node, target, 320);
}

function setupLoadLoRA(node) {
  node.loragraph.summary = addPanel(node, "lora_summary", "summary", 50, 180).element;
  const combo = node.widgets?.find((w) => w.name === "lora_name");
  if (combo) {
    const callback = combo.callback;
    combo.callback = function (...args) {
      const r = callback?.apply(this, args);
      refreshSummary(node);
      return r;
    };
  }
  // Values loaded from a workflow arrive after the node is created.
  setTimeout(() => refreshSummary(node), 0);
}

// -- ScheduleAdapterWeights: the curve ---------------------------------------------------------

const CURVE_WIDTH = 260;
const CURVE_HEIGHT = 84;

function redrawCurve(node) {
  const state = node.loragraph;
  if (!state?.curve) return;
  const text = widgetValue(node, "keyframes") ?? "";
  const interpolation = widgetValue(node, "interpolation") ?? "linear";
  if (state.curveFor === `${interpolation}|${text}`) return;
  state.curveFor = `${interpolation}|${text}`;
  drawCurve(state.curve, text, interpolation);
}

/** The text box of a multiline widget, whichever way this frontend keeps it. */
function textBox(widget) {
  const el = widget?.inputEl ?? widget?.element;
  if (!el) return null;
  return el.tagName === "TEXTAREA" ? el : el.querySelector?.("textarea");
}

function setupSchedule(node) {
  const { element } = addPanel(node, "curve", "curve", CURVE_HEIGHT + 30, CURVE_HEIGHT + 30);
  const canvas = document.createElement("canvas");
  canvas.width = CURVE_WIDTH;
  canvas.height = CURVE_HEIGHT;
  canvas.style.width = `${CURVE_WIDTH}px`;
  canvas.style.height = `${CURVE_HEIGHT}px`;
  canvas.dataset.loragraph = "curve";
  element.appendChild(canvas);
  element.loragraphHeight = CURVE_HEIGHT + 20;
  element.style.overflow = "hidden";
  node.loragraph.curve = canvas;
  for (const name of ["keyframes", "interpolation"]) {
    const widget = node.widgets?.find((w) => w.name === name);
    if (!widget) continue;
    const callback = widget.callback;
    widget.callback = function (...args) {
      const r = callback?.apply(this, args);
      redrawCurve(node);
      return r;
    };
    // every keystroke in the text box, not only the committed value
    textBox(widget)?.addEventListener("input", () => redrawCurve(node));
  }
  grow(node, element, CURVE_WIDTH + 30);
  setTimeout(() => redrawCurve(node), 0); // values loaded from a workflow arrive after creation
}

// -- the adapter picker -------------------------------------------------------------------------

/** The click that opened the menu, or one at the node's top edge (ContextMenu wants a MouseEvent). */
function menuEvent(node, event) {
  if (event instanceof MouseEvent) return event;
  const canvas = app.canvas;
  const rect = canvas?.canvas?.getBoundingClientRect?.() ?? { left: 0, top: 0 };
  const [x, y] = canvas?.ds?.convertOffsetToCanvas?.([node.pos[0] + node.size[0] / 2, node.pos[1]]) ?? [100, 100];
  const clientX = typeof event?.clientX === "number" ? event.clientX : rect.left + x;
  const clientY = typeof event?.clientY === "number" ? event.clientY : rect.top + y;
  return new MouseEvent("click", { clientX, clientY, bubbles: true });
}

function pickerEntries(node, spec) {
  const available = upstreamAdapters(node);
  const current = splitNames(widgetValue(node, spec.widget));
  if (!available.length) return [{ content: "no adapters loaded upstream", disabled: true }];
  const entries = [];
  if (spec.many) entries.push({ content: `all: ${available.join(", ")}`, value: available.join(", ") });
  for (const name of available) {
    const on = current.includes(name);
    let value = name;
    if (spec.many) {
      const next = on ? current.filter((x) => x !== name) : [...current, name];
      value = available.filter((x) => next.includes(x)).concat(next.filter((x) => !available.includes(x))).join(", ");
    }
    entries.push({ content: `${on ? "✓ " : ""}${name}`, value });
  }
  entries.push({ content: spec.empty ? `clear (empty = ${spec.empty})` : "clear", value: "" });
  return entries;
}

function openPicker(node, spec, event) {
  const entries = pickerEntries(node, spec);
  const LiteGraph = window.LiteGraph;
  if (!LiteGraph?.ContextMenu) return entries;
  new LiteGraph.ContextMenu(entries, {
    event: menuEvent(node, event),
    title: "adapters loaded upstream",
    className: "loragraph-adapter-menu",
    callback: (entry) => {
      if (entry && !entry.disabled && entry.value !== undefined) setWidget(node, spec.widget, entry.value);
    },
  });
  return entries;
}

function setupPicker(node, spec) {
  if (typeof node.addWidget !== "function") return;
  const label = spec.many ? "pick adapters" : "pick adapter";
  const button = node.addWidget("button", label, null, (_w, _canvas, _node, _pos, event) => openPicker(node, spec, event),
    { serialize: false });
  button.serialize = false;
  node.loragraph.openPicker = (event) => openPicker(node, spec, event);
}

// -- LoRAInfo and warnings ----------------------------------------------------------------------

function setupLoRAInfo(node) {
  const { element } = addPanel(node, "lora_info", "info", 60, 640);
  node.loragraph.info = element;
  renderInfo(element, null);
}

function onExecuted(node, output) {
  const state = node.loragraph;
  if (!state) return;
  const text = output?.text;
  if (state.info) {
    if (text?.length) {
      state.lastInfo = text[0];
      renderInfo(state.info, text[0]);
      grow(node, state.info, 560);
    }
    return;
  }
  if (!text?.length) return;
  if (!state.warnings) state.warnings = addPanel(node, "warnings", "warnings", 30, 160).element;
  const lines = (node.comfyClass === "SaveLoRA") ? text.map((t) => `saved ${t}`) : text;
  renderWarnings(state.warnings, lines);
  grow(node, state.warnings);
}

// -- badges -------------------------------------------------------------------------------------

let badges = { at: 0, graph: null, map: new Map() };

function badgesFor(graph) {
  const now = Date.now();
  if (badges.graph !== graph || now - badges.at > BADGE_REFRESH_MS) {
    let map = new Map();
    try {
      map = fusedBadges(graph);
    } catch (e) {
      console.warn("[loragraph] could not work out fused adapters", e);
    }
    badges = { at: now, graph, map };
  }
  return badges.map;
}

function drawBadge(node, ctx) {
  if (node.flags?.collapsed) return;
  const names = badgesFor(node.graph).get(node.id);
  node.loragraphFused = names;
  if (!names?.length) return;
  const text = `fused: ${names.join(", ")}`;
  const titleHeight = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  ctx.save();
  ctx.font = "bold 10px sans-serif";
  const width = Math.min(ctx.measureText(text).width + 12, Math.max(40, node.size[0] - 20));
  const x = node.size[0] - width - 6;
  const y = -titleHeight - 18;
  ctx.fillStyle = "#1f6feb";
  ctx.beginPath();
  if (ctx.roundRect) ctx.roundRect(x, y, width, 15, 7);
  else ctx.rect(x, y, width, 15);
  ctx.fill();
  ctx.fillStyle = "#fff";
  ctx.textBaseline = "middle";
  ctx.fillText(text, x + 6, y + 8, width - 12);
  ctx.restore();
}

// -- the starting graph under `loragraph serve` -------------------------------------------------

async function starterWorkflow() {
  let loras = [];
  try {
    const res = await api.fetchApi("/loragraph/loras");
    if (res.ok) loras = await res.json();
  } catch (e) {
    /* no LoRA list: the starter has no LoadLoRA */
  }
  // The trained demo model and one of its own LoRAs (a LoRA made for another model would not land).
  const wf = {
    1: { class_type: "LoadPipeline", inputs: { model: "builtin:shapes", dtype: "auto", device: "auto" } },
  };
  let pipeline = ["1", 0];
  const lora = loras.find((name) => name === "shapes/outline.safetensors") ?? loras.find((name) => name.startsWith("shapes/"));
  if (lora) {
    wf[2] = { class_type: "LoadLoRA", inputs: { pipeline, lora_name: lora, strength: 1.0, adapter_name: "" } };
    pipeline = ["2", 0];
    wf[3] = { class_type: "LoRAInfo", inputs: { pipeline } };
  }
  wf[4] = {
    class_type: "Sampler",
    inputs: { pipeline, prompt: "a red circle on a white background", negative_prompt: "", seed: 0, steps: 20,
      cfg: 7.0, width: 32, height: 32, scheduler: "default", batch_size: 1 },
  };
  wf[5] = { class_type: "SaveImage", inputs: { images: ["4", 0], filename_prefix: "loragraph" } };
  return wf;
}

async function useStarterGraphWhenHeadless() {
  let stats = null;
  try {
    stats = await api.getSystemStats();
  } catch (e) {
    return;
  }
  if (stats?.system?.loragraph_version === undefined) return; // inside ComfyUI: its default graph stays
  const loadGraphData = app.loadGraphData;
  app.loadGraphData = async function (graphData, ...rest) {
    if (graphData || !window.LiteGraph?.registered_node_types?.LoadPipeline || typeof this.loadApiJson !== "function") {
      return loadGraphData.call(this, graphData, ...rest);
    }
    return this.loadApiJson(await starterWorkflow(), "loragraph");
  };
}

// -- the extension ------------------------------------------------------------------------------

app.registerExtension({
  name: EXTENSION,

  async setup() {
    installStyle();
    installComboHover();
    await useStarterGraphWhenHeadless();
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PACK_NODES.has(nodeData?.name)) return;
    const proto = nodeType.prototype;

    const executed = proto.onExecuted;
    proto.onExecuted = function (output) {
      const r = executed?.apply(this, arguments);
      onExecuted(this, output);
      return r;
    };

    const draw = proto.onDrawForeground;
    proto.onDrawForeground = function (ctx) {
      const r = draw?.apply(this, arguments);
      if (this.comfyClass === "ScheduleAdapterWeights") redrawCurve(this); // undo, paste, loaded values
      if (this.comfyClass === "LoRAStack") this.loragraph?.syncRows?.();
      if (this.comfyClass === "LoadLoRA" || this.comfyClass === "FuseLoRA") {
        drawBadge(this, ctx);
        // Catches every way lora_name can change (loading a workflow, undo, paste), not only the combo.
        if (this.comfyClass === "LoadLoRA" && widgetValue(this, "lora_name") !== this.loragraph?.summaryFor) {
          refreshSummary(this);
        }
      }
      return r;
    };
  },

  nodeCreated(node) {
    const kind = node.comfyClass;
    if (!PACK_NODES.has(kind)) return;
    node.loragraph = {};
    try {
      if (kind === "LoadLoRA") setupLoadLoRA(node);
      if (kind === "LoRAInfo") setupLoRAInfo(node);
      if (kind === "ScheduleAdapterWeights") setupSchedule(node);
      if (kind === "LoRAStack") {
        const loras = node.widgets?.find((w) => w.name === "loras");
        if (loras) setupStack(node, loras, addPanel, (element) => grow(node, element, 420));
        setTimeout(() => node.loragraph.syncRows?.(), 0); // values loaded from a workflow arrive after creation
      }
      if (PICKERS[kind]) setupPicker(node, PICKERS[kind]);
    } catch (e) {
      console.error(`[loragraph] could not add the editor widgets to ${kind}`, e);
    }
  },
});
