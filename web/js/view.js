// DOM for the node widgets: the LoadLoRA file summary and the LoRAInfo table.
// Everything shown comes from files and their metadata, so it goes in as text, never as HTML.

const STYLE_ID = "loragraph-style";

export function installStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = `
.loragraph-panel { box-sizing: border-box; width: 100%; height: 100%; overflow: auto; padding: 4px 6px;
  font: 11px/1.35 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  color: var(--input-text, #ddd); background: var(--comfy-input-bg, #222); border-radius: 6px; }
.loragraph-panel .lg-muted { opacity: 0.65; }
.loragraph-panel .lg-error { color: #f88; }
.loragraph-panel .lg-warn { color: #fc6; }
.loragraph-panel table { border-collapse: collapse; width: 100%; margin-top: 3px; }
.loragraph-panel th, .loragraph-panel td { border-bottom: 1px solid rgba(127,127,127,0.25); padding: 1px 4px;
  text-align: left; white-space: nowrap; vertical-align: top; }
.loragraph-panel th { font-weight: 600; opacity: 0.8; }
.loragraph-panel td.lg-fused { color: #7cf; font-weight: 600; }
`;
  document.head.appendChild(style);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function line(label, value, cls) {
  const div = el("div", null, cls);
  if (label) div.appendChild(el("span", `${label}: `, "lg-muted"));
  div.appendChild(el("span", value));
  return div;
}

export function panel(kind) {
  const div = el("div", null, `loragraph-panel loragraph-${kind}`);
  div.dataset.loragraph = kind;
  return div;
}

function numbers(list) {
  const shown = (list ?? []).map((x) => (x == null ? "none" : Number(x).toString()));
  return shown.length ? shown.join(", ") : "?";
}

/** One line per fact about a LoRA file (the /loragraph/lora_info answer). */
export function renderSummary(target, summary) {
  target.replaceChildren();
  if (!summary) {
    target.appendChild(el("div", "no LoRA file selected", "lg-muted"));
    return;
  }
  if (summary.error) {
    target.appendChild(el("div", summary.error, "lg-error"));
    return;
  }
  const title = summary.title && summary.title !== String(summary.file ?? "").replace(/\.[^.]*$/, "") ? summary.title : null;
  if (title) target.appendChild(line("title", title));
  // The alpha peft uses, as LoRAInfo shows it; "= rank" when the file stores none.
  const alphas = numbers(summary.effective_alphas ?? summary.alphas);
  const stored = summary.alpha_in_file === false ? " (= rank, not in the file)" : "";
  target.appendChild(line("format", `${summary.format} · rank ${numbers(summary.ranks)} · alpha ${alphas}${stored}`));
  target.appendChild(line("base model", summary.base_model ?? "unknown"));
  // the pipeline every module lands on (after its own converters), as `loragraph inspect` names it
  if (summary.family) target.appendChild(line("family", summary.family));
  const parts = Object.entries(summary.components ?? {}).map(([c, n]) => `${c} ${n}`);
  target.appendChild(line("modules", `${summary.modules}${parts.length ? ` (${parts.join(", ")})` : ""}`));
  const triggers = summary.trigger_words ?? [];
  target.appendChild(line("trigger words", triggers.length ? triggers.join(", ") : "none in the metadata"));
  if (summary.nonfinite_keys?.length) {
    target.appendChild(line("warning", `${summary.nonfinite_keys.length} tensors hold NaN/inf`, "lg-warn"));
  }
}

/** `{unet: 0.8, text_encoder: 0.8}` -> "0.8"; different values -> "unet 0.8, text_encoder 0.6". */
function perComponent(value) {
  if (value == null) return "—";
  if (typeof value !== "object") return String(value);
  const entries = Object.entries(value);
  if (!entries.length) return "—";
  const distinct = new Set(entries.map(([, v]) => JSON.stringify(v)));
  if (distinct.size === 1) {
    const v = entries[0][1];
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }
  return entries.map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}

export const INFO_COLUMNS = ["adapter", "active", "weights", "strength", "rank", "alpha", "fused", "device"];

/** LoRAInfo's JSON as a table of adapters plus a few lines of pipeline-wide state. */
export function renderInfo(target, text) {
  target.replaceChildren();
  let info;
  try {
    info = typeof text === "string" ? JSON.parse(text) : text;
  } catch (e) {
    target.appendChild(el("pre", String(text)));
    return;
  }
  if (!info || typeof info !== "object") {
    target.appendChild(el("div", "no information yet: run the workflow", "lg-muted"));
    return;
  }
  if (info.pipeline) target.appendChild(line("pipeline", `${info.pipeline} (${(info.components ?? []).join(", ")})`));
  const adapters = Object.entries(info.adapters ?? {});
  if (!adapters.length) {
    target.appendChild(el("div", "no adapters loaded", "lg-muted"));
  } else {
    const table = el("table");
    const head = el("tr");
    for (const c of INFO_COLUMNS) head.appendChild(el("th", c));
    table.appendChild(el("thead")).appendChild(head);
    const body = table.appendChild(el("tbody"));
    for (const [name, a] of adapters) {
      const row = el("tr");
      row.dataset.adapter = name;
      const fused = a.fused?.length ? a.fused.join(", ") : "—";
      const cells = [name, a.active ? "yes" : "no", a.active ? perComponent(a.weights) : "—", a.strength,
        perComponent(a.rank), perComponent(a.alpha) + (a.alpha_in_file === false ? " (= rank)" : ""), fused,
        a.device ?? "—"];
      cells.forEach((v, i) => {
        const td = el("td", v);
        if (INFO_COLUMNS[i] === "fused" && a.fused?.length) td.className = "lg-fused";
        row.appendChild(td);
      });
      body.appendChild(row);
    }
    target.appendChild(table);
  }
  for (const f of info.fused ?? []) {
    target.appendChild(line("fused", `${(f.adapter_names ?? []).join(", ")} into ${(f.components ?? []).join(", ")}`
      + ` at scale ${f.lora_scale}`));
  }
  const te = Object.entries(info.text_encoder_lora ?? {}).map(([k, on]) => `${k} ${on ? "on" : "off"}`);
  if (te.length) target.appendChild(line("text-encoder LoRA", te.join(", ")));
  for (const w of info.warnings ?? []) target.appendChild(line("warning", w, "lg-warn"));
}

/** Warnings a LoRA node reported (its `executed` output.text), or nothing. */
export function renderWarnings(target, lines) {
  target.replaceChildren();
  for (const w of lines ?? []) target.appendChild(line("warning", w, "lg-warn"));
}
