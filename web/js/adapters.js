// The LoRA state along a pipeline chain, worked out from the graph alone (no server call), so the
// editor can offer the adapter names loaded upstream and badge what gets fused while the user edits.
//
// It mirrors loaders/state.py's transitions closely enough for the UI: LoadLoRA adds an adapter
// (named by adapter_name, or derived from the file name as derive_adapter_name does) and makes every
// loaded adapter active; SetAdapterWeights chooses the active set; FuseLoRA fuses the named (or the
// active) adapters; UnfuseLoRA, DeleteAdapters and UnloadLoRA undo. The engine stays the authority:
// LoRAInfo reports what really happened.
//
// No imports: the functions take LiteGraph nodes and plain values, so they run in any host.

const NAME_NOT_OK = /[^A-Za-z0-9_-]+/g;
const BYPASS = 4; // LiteGraph's mode for a bypassed node: its pipeline input flows through

/** `styles/ink-v2.safetensors` -> `ink-v2`, then `ink-v2_2`, ... until unused (state.derive_adapter_name). */
export function deriveAdapterName(loraName, taken) {
  let stem = String(loraName ?? "").replace(/\\/g, "/").split("/").pop();
  if (stem.includes(".")) stem = stem.slice(0, stem.lastIndexOf("."));
  const base = stem.replace(NAME_NOT_OK, "_").replace(/^_+|_+$/g, "") || "lora";
  let name = base;
  for (let i = 2; taken.includes(name); i++) name = `${base}_${i}`;
  return name;
}

/** "a, b,,c " -> ["a", "b", "c"] */
export function splitNames(text) {
  return String(text ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

export function widgetValue(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

/** The node feeding `node`'s PIPELINE input (legacy Reroute nodes are looked through), or null. */
export function pipelineSource(node) {
  let current = node;
  for (let hops = 0; hops < 64; hops++) {
    const slot = current?.inputs?.findIndex((i) => i.type === "PIPELINE" || i.name === "pipeline");
    const index = slot != null && slot >= 0 ? slot : current?.type === "Reroute" ? 0 : -1;
    if (index < 0 || current.inputs?.[index]?.link == null) return null;
    const source = current.getInputNode?.(index);
    if (!source) return null;
    if (source.type !== "Reroute") return source;
    current = source;
  }
  return null;
}

/** The nodes from the start of `node`'s pipeline chain down to `node` itself. */
export function chainTo(node) {
  const chain = [];
  const seen = new Set();
  for (let n = node; n && !seen.has(n); n = pipelineSource(n)) {
    seen.add(n);
    chain.push(n);
  }
  return chain.reverse();
}

/**
 * The LoRA state after `node`: loaded adapters (in load order, with the LoadLoRA node that loaded
 * each), the active ones, and the fused ones (with the FuseLoRA node that fused them).
 * `includeSelf` false gives the state the node receives, which is what its adapter_names can name.
 */
export function stateAt(node, includeSelf = true) {
  const chain = chainTo(node);
  if (!includeSelf) chain.pop();
  let loaded = []; // [{name, node}]
  let active = [];
  let fused = []; // [{name, by}]
  const names = () => loaded.map((a) => a.name);
  for (const n of chain) {
    if (n.mode === BYPASS) continue;
    switch (n.comfyClass ?? n.type) {
      case "LoadLoRA": {
        const explicit = String(widgetValue(n, "adapter_name") ?? "").trim();
        const name = explicit || deriveAdapterName(widgetValue(n, "lora_name"), names());
        if (!names().includes(name)) loaded.push({ name, node: n });
        active = names();
        break;
      }
      case "SetAdapterWeights": {
        const wanted = splitNames(widgetValue(n, "adapter_names"));
        active = wanted.length ? wanted.filter((x) => names().includes(x)) : names();
        break;
      }
      case "FuseLoRA": {
        const wanted = splitNames(widgetValue(n, "adapter_names"));
        for (const name of wanted.length ? wanted : active) {
          if (names().includes(name) && !fused.some((f) => f.name === name)) fused.push({ name, by: n });
        }
        break;
      }
      case "UnfuseLoRA":
        fused = [];
        break;
      case "DeleteAdapters": {
        const gone = splitNames(widgetValue(n, "adapter_names"));
        loaded = loaded.filter((a) => !gone.includes(a.name));
        active = active.filter((x) => !gone.includes(x));
        fused = fused.filter((f) => !gone.includes(f.name));
        break;
      }
      case "UnloadLoRA":
        loaded = [];
        active = [];
        fused = [];
        break;
      default:
        break;
    }
  }
  return { loaded, active, fused };
}

/** Adapter names loaded upstream of `node` (what its adapter_names widget may name). */
export function upstreamAdapters(node) {
  return stateAt(node, false).loaded.map((a) => a.name);
}

/**
 * Which nodes of `graph` have fused adapters: every FuseLoRA (with the names it fuses) and every
 * LoadLoRA whose adapter some FuseLoRA downstream fuses. Returns Map(node id -> [names]).
 */
export function fusedBadges(graph) {
  const badges = new Map();
  const add = (node, name) => {
    const list = badges.get(node.id) ?? [];
    if (!list.includes(name)) list.push(name);
    badges.set(node.id, list);
  };
  for (const node of graph?._nodes ?? graph?.nodes ?? []) {
    if ((node.comfyClass ?? node.type) !== "FuseLoRA" || node.mode === BYPASS) continue;
    const { loaded, fused } = stateAt(node, true);
    for (const f of fused.filter((x) => x.by === node)) {
      add(node, f.name);
      const origin = loaded.find((a) => a.name === f.name);
      if (origin) add(origin.node, f.name);
    }
  }
  return badges;
}
