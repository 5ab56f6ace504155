// Drives ComfyUI's frontend, served by `loragraph serve`, in headless Chromium (tests/test_browser.py).
//
//   node tests/browser/editor_flow.js <config.json>
//
// config: {url, run_workflow, names_workflow, schedule_workflow, family_workflow, family_edits,
//          screenshot_dir, user_data_dir, chromium, timeout_ms}
// It opens the editor, checks the pack's nodes and the starting graph, loads `run_workflow` (API
// format), checks the extension's widgets (LoadLoRA summaries, the adapter picker, fused badges),
// queues it, waits for the image and the LoRAInfo table, takes screenshots, then loads
// `names_workflow` to check adapter names derived from file names, and `schedule_workflow` to check
// ScheduleAdapterWeights' curve while keyframes are typed, and `family_workflow` to check the
// Sampler's optional inputs and LoadLoRA's target as shown, set and queued. It prints one JSON object (the
// observations) as its last line; the Python test asserts on it. Exit status 0 unless the browser
// could not be driven at all.

"use strict";

const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

async function main() {
  const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const timeout = config.timeout_ms ?? 60000;
  const out = { console_errors: [], page_errors: [], bad_responses: [], steps: [] };
  const t0 = Date.now();
  const step = (name) => out.steps.push([name, Date.now() - t0]);

  const context = await chromium.launchPersistentContext(config.user_data_dir, {
    executablePath: config.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 2000, height: 1100 },
  });
  context.setDefaultTimeout(timeout);
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => {
    if (m.type() === "error") out.console_errors.push(m.text().slice(0, 500));
  });
  page.on("pageerror", (e) => out.page_errors.push(String(e.stack || e).slice(0, 1500)));
  // Every request the browser makes, from any page or worker of the context: none may leave this machine.
  out.outside_requests = [];
  const local = (u) => {
    try {
      const { protocol, hostname } = new URL(u);
      return !["http:", "https:", "ws:", "wss:"].includes(protocol) || hostname === "127.0.0.1";
    } catch (e) {
      return false;
    }
  };
  context.on("request", (r) => {
    if (!local(r.url())) out.outside_requests.push(r.url().slice(0, 300));
  });
  page.on("websocket", (ws) => {
    if (!local(ws.url())) out.outside_requests.push(ws.url().slice(0, 300));
  });
  page.on("response", (r) => {
    if (r.url().startsWith(config.url) && r.status() >= 400) out.bad_responses.push([r.status(), r.url()]);
  });

  try {
    await page.goto(config.url, { waitUntil: "load" });
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.LoadLoRA
      && window.app.canvas);
    step("editor booted");
    out.node_types = await page.evaluate(() => Object.keys(window.LiteGraph.registered_node_types));
    // Our extension module loaded (it is listed by /extensions and imported by the frontend).
    out.extension_loaded = await page.waitForFunction(
      () => [...document.querySelectorAll("style")].some((s) => s.id === "loragraph-style"), null, { timeout: 15000 },
    ).then(() => true, () => false);

    // The starting graph of a headless server: our nodes, not ComfyUI's default graph.
    await page.waitForFunction(() => window.app.graph._nodes.length > 0, null, { timeout: 15000 }).catch(() => {});
    out.starter_nodes = await page.evaluate(() => window.app.graph._nodes.map((n) => n.comfyClass));
    step("starter graph");

    // -- the quickstart ----------------------------------------------------------------------
    await page.evaluate((wf) => window.app.loadApiJson(wf, "quickstart"), config.run_workflow);
    await page.waitForFunction(() => window.app.graph._nodes.some((n) => n.comfyClass === "Sampler"));
    out.summaries = await waitForSummaries(page);
    step("summaries");

    // Adapter picker on SetAdapterWeights: what it offers, and the real menu filling the widget.
    out.picker = await page.evaluate(async () => {
      const { upstreamAdapters } = await import("/extensions/loragraph/js/adapters.js");
      const result = {};
      for (const n of window.app.graph._nodes) {
        if (["SetAdapterWeights", "FuseLoRA", "DeleteAdapters"].includes(n.comfyClass)) {
          result[n.comfyClass] = upstreamAdapters(n);
        }
      }
      const node = window.app.graph._nodes.find((n) => n.comfyClass === "SetAdapterWeights");
      result.button = node?.widgets?.some((w) => w.type === "button" && w.name.startsWith("pick adapter")) ?? false;
      result.before = node?.widgets?.find((w) => w.name === "adapter_names")?.value;
      return result;
    });
    const picked = [];
    for (const label of [(s) => s.startsWith("✓ ") && !s.includes("all"), (s) => s.startsWith("all: ")]) {
      await page.evaluate(() => window.app.graph._nodes.find((n) => n.comfyClass === "SetAdapterWeights")
        .loragraph.openPicker());
      const entries = page.locator(".litecontextmenu .litemenu-entry");
      await entries.first().waitFor();
      const texts = await entries.allInnerTexts();
      const index = texts.findIndex((t) => label(t.trim()));
      if (index < 0) throw new Error(`no such picker entry among ${JSON.stringify(texts)}`);
      await entries.nth(index).click();
      picked.push({ menu: texts, value: await page.evaluate(() => window.app.graph._nodes
        .find((n) => n.comfyClass === "SetAdapterWeights").widgets.find((w) => w.name === "adapter_names").value) });
    }
    out.picker.picked = picked;
    step("picker");

    // Fused badges, as drawn: LoadLoRA nodes whose adapters FuseLoRA fuses, and the FuseLoRA itself.
    await fitView(page);
    out.badges = await page.evaluate(() => {
      window.app.canvas.draw(true, true);
      return Object.fromEntries(window.app.graph._nodes.filter((n) => n.loragraphFused?.length)
        .map((n) => [`${n.id}:${n.comfyClass}`, n.loragraphFused]));
    });

    // The API prompt and the saved graph: our widgets must not leak into either.
    out.prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
    out.saved_graph = await page.evaluate(() => window.app.graph.serialize());

    // A node right below LoRAInfo: its table, once it runs, must not grow over it (it scrolls instead).
    out.below = await page.evaluate(() => {
      const info = window.app.graph._nodes.find((n) => n.comfyClass === "LoRAInfo");
      const below = window.app.graph._nodes.find((n) => n.comfyClass === "SaveImage");
      if (!info || !below) return null;
      below.pos = [info.pos[0], info.pos[1] + Math.max(info.size[1], 60) + 60];
      window.app.graph.setDirtyCanvas(true, true);
      return { id: below.id, top: below.pos[1] };
    });

    // -- queue it, wait for the image and LoRAInfo's table --------------------------------------
    await page.evaluate(async () => {
      const { api } = await import("/scripts/api.js");
      window.__lg = { executed: [], errors: [] };
      api.addEventListener("executed", (e) => window.__lg.executed.push(e.detail));
      api.addEventListener("execution_error", (e) => window.__lg.errors.push(e.detail));
      await window.app.queuePrompt(0, 1);
    });
    step("queued");
    await page.waitForFunction(() => {
      const lg = window.__lg;
      if (lg.errors.length) return true;
      const withImages = lg.executed.some((d) => d.output?.images?.length);
      const withText = lg.executed.some((d) => d.output?.text?.length);
      return withImages && withText;
    }, null, { timeout, polling: 250 });
    out.executed = await page.evaluate(() => window.__lg.executed);
    out.execution_errors = await page.evaluate(() => window.__lg.errors);
    step("executed");

    out.image = await page.waitForFunction(() => {
      const node = window.app.graph._nodes.find((n) => n.comfyClass === "SaveImage");
      const img = node?.imgs?.[0];
      return img && img.complete && img.naturalWidth > 0
        ? { src: img.src, width: img.naturalWidth, height: img.naturalHeight } : null;
    }, null, { timeout: 20000 }).then((h) => h.jsonValue(), () => null);
    if (out.image?.src) {
      const res = await page.request.get(out.image.src);
      const body = await res.body();
      out.image.status = res.status();
      out.image.png = body.slice(0, 8).toString("hex") === "89504e470d0a1a0a";
    }
    out.info_table = await page.waitForFunction(() => {
      const node = window.app.graph._nodes.find((n) => n.comfyClass === "LoRAInfo");
      const rows = node?.loragraph?.info?.querySelectorAll("tr[data-adapter]");
      if (!rows?.length) return null;
      return {
        header: [...node.loragraph.info.querySelectorAll("th")].map((th) => th.textContent),
        rows: [...rows].map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent)),
        text: node.loragraph.info.textContent,
        visible: node.loragraph.info.getBoundingClientRect().height > 0,
      };
    }, null, { timeout: 10000 }).then((h) => h.jsonValue(), () => null);
    step("image and table");
    await fitView(page);
    out.info_layout = await page.evaluate((belowId) => {
      const nodes = window.app.graph._nodes;
      const info = nodes.find((n) => n.comfyClass === "LoRAInfo");
      const below = nodes.find((n) => n.id === belowId);
      if (!info || !below) return null;
      const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
      const canvas = window.app.canvas;
      const rect = canvas.canvas.getBoundingClientRect();
      const [, belowTopPx] = canvas.ds.convertOffsetToCanvas([below.pos[0], below.pos[1] - title]);
      const panel = info.loragraph.info;
      return {
        info_bottom: info.pos[1] + info.size[1], below_top: below.pos[1] - title,
        panel_bottom_px: panel.getBoundingClientRect().bottom, below_top_px: rect.top + belowTopPx,
        scrolls: panel.scrollHeight > panel.clientHeight + 1, panel_height: panel.clientHeight,
      };
    }, out.below?.id);

    await fitView(page);
    fs.mkdirSync(config.screenshot_dir, { recursive: true });
    out.screenshots = [path.join(config.screenshot_dir, "editor-quickstart.png")];
    await page.screenshot({ path: out.screenshots[0] });
    const info = await page.evaluate(() => {
      const node = window.app.graph._nodes.find((n) => n.comfyClass === "LoRAInfo");
      const r = node?.loragraph?.info?.getBoundingClientRect();
      return r && r.width > 0 ? { x: r.x, y: r.y, width: r.width, height: r.height } : null;
    });
    if (info) {
      const clip = { x: Math.max(0, info.x - 10), y: Math.max(0, info.y - 60), width: info.width + 20, height: info.height + 70 };
      out.screenshots.push(path.join(config.screenshot_dir, "editor-lorainfo.png"));
      await page.screenshot({ path: out.screenshots[1], clip });
    }
    step("screenshots");

    // -- adapter names derived from file names, and a summary with trigger words -----------------
    if (config.names_workflow) {
      await page.evaluate((wf) => window.app.loadApiJson(wf, "names"), config.names_workflow);
      await page.waitForFunction(() => window.app.graph._nodes.some((n) => n.comfyClass === "DeleteAdapters"));
      out.names_summaries = await waitForSummaries(page);
      out.names_upstream = await page.evaluate(async () => {
        const { upstreamAdapters } = await import("/extensions/loragraph/js/adapters.js");
        const node = window.app.graph._nodes.find((n) => n.comfyClass === "DeleteAdapters");
        return upstreamAdapters(node);
      });
      // Changing the combo refreshes the summary.
      out.combo_change = await page.evaluate(async () => {
        const node = window.app.graph._nodes.find((n) => n.comfyClass === "LoadLoRA");
        const combo = node.widgets.find((w) => w.name === "lora_name");
        const other = combo.options.values.find((v) => v !== combo.value && v.endsWith(".safetensors")
          && !v.startsWith("bad"));
        combo.value = other;
        combo.callback?.(other);
        for (let i = 0; i < 100; i++) {
          if (node.loragraph.lastSummary?.file === other.split("/").pop()) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        return { to: other, summary_file: node.loragraph.lastSummary?.file, text: node.loragraph.summary.textContent };
      });
      await fitView(page);
      out.screenshots.push(path.join(config.screenshot_dir, "editor-names.png"));
      await page.screenshot({ path: out.screenshots.at(-1) });
      step("derived names");
    }
    // -- ScheduleAdapterWeights: the curve follows the keyframes as they are typed ---------------
    if (config.schedule_workflow) {
      await page.evaluate((wf) => window.app.loadApiJson(wf, "schedule"), config.schedule_workflow);
      await page.waitForFunction(() => window.app.graph._nodes.some((n) => n.comfyClass === "ScheduleAdapterWeights")
        && window.app.graph._nodes.find((n) => n.comfyClass === "ScheduleAdapterWeights").loragraph?.curve?.loragraphPlot);
      await fitView(page);
      const readPlot = () => page.evaluate(() => {
        const node = window.app.graph._nodes.find((n) => n.comfyClass === "ScheduleAdapterWeights");
        const canvas = node.loragraph.curve;
        const plot = canvas.loragraphPlot;
        const ctx = canvas.getContext("2d");
        // the pixels under each keyframe's dot and under the curve between, as drawn
        const painted = (p, s) => {
          const [x, y] = plot.toPixel(p, s);
          const d = ctx.getImageData(Math.round(x) - 1, Math.round(y) - 1, 3, 3).data;
          let best = 0;
          for (let i = 0; i < d.length; i += 4) best = Math.max(best, d[i + 3]);
          return best;
        };
        return {
          error: plot.error, keyframes: plot.keyframes, samples: plot.samples, range: plot.range ?? null,
          keyframe_alpha: (plot.keyframes ?? []).map(([p, s]) => painted(p, s)),
          // inside the frame: points on the curve, and the same progress with the strength a third of
          // the range away (towards the middle), which must be blank
          curve_alpha: plot.keyframes ? [0.2, 0.5, 0.8].map((p) => painted(p, plot.samples.find((x) => x[0] >= p)[1]))
            : [],
          off_alpha: plot.keyframes ? [0.2, 0.5, 0.8].map((p) => {
            const s = plot.samples.find((x) => x[0] >= p)[1];
            const [lo, hi] = plot.range;
            return painted(p, s + (hi - lo) / 3 * (s > (lo + hi) / 2 ? -1 : 1));
          }) : [],
          widget: node.widgets.find((w) => w.name === "keyframes").value,
          visible: canvas.getBoundingClientRect().height > 0,
        };
      });
      out.schedule = { loaded: await readPlot(), typing: [] };
      // type new keyframes into the node's text box, key by key, as a user does
      const box = await page.evaluateHandle(() => {
        const node = window.app.graph._nodes.find((n) => n.comfyClass === "ScheduleAdapterWeights");
        const w = node.widgets.find((x) => x.name === "keyframes");
        const el = w.inputEl ?? w.element;
        return el.tagName === "TEXTAREA" ? el : el.querySelector("textarea");
      });
      await box.asElement().click();
      await page.keyboard.press("Control+A");
      await page.keyboard.press("Backspace");
      for (const chunk of ["0:0, 0.5:", "x", "Backspace", "1, 1:-1"]) {
        if (chunk === "Backspace") await page.keyboard.press("Backspace");
        else await page.keyboard.type(chunk, { delay: 5 });
        out.schedule.typing.push(await readPlot());
      }
      // the curve is never saved or sent: the saved graph converts to exactly the queued prompt
      out.schedule.prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
      out.schedule.saved_graph = await page.evaluate(() => window.app.graph.serialize());
      await fitView(page);
      out.screenshots.push(path.join(config.screenshot_dir, "editor-schedule.png"));
      await page.screenshot({ path: out.screenshots.at(-1) });
      step("schedule curve");
    }
    // -- model families: the Sampler's optional inputs and LoadLoRA's target, set in the editor -----
    if (config.family_workflow) {
      out.family = await familyFlow(page, config, timeout);
      step("family inputs");
    }
  } catch (e) {
    out.failure = String(e.stack || e);
    try {
      fs.mkdirSync(config.screenshot_dir, { recursive: true });
      const shot = path.join(config.screenshot_dir, "editor-failure.png");
      await page.screenshot({ path: shot });
      out.screenshots = [...(out.screenshots ?? []), shot];
    } catch (_) { /* the page is gone */ }
  } finally {
    await context.close();
  }
  out.elapsed_ms = Date.now() - t0;
  console.log(JSON.stringify(out));
}

/** Loads `family_workflow`, reads how the editor shows the Sampler's optional inputs and LoadLoRA's
 * target, sets `family_edits` ({node id: {widget: value}}) through the widgets, queues it, and keeps
 * the prompt the browser POSTed to /prompt and what the run returned. */
async function familyFlow(page, config, timeout) {
  await page.evaluate((wf) => window.app.loadApiJson(wf, "families"), config.family_workflow);
  await page.waitForFunction((n) => window.app.graph._nodes.length === n,
    Object.keys(config.family_workflow).length);
  const family = {};
  family.summaries = await waitForSummaries(page);
  family.shown = await page.evaluate(() => Object.fromEntries(window.app.graph._nodes.map((n) => [String(n.id), {
    class_type: n.comfyClass,
    widgets: (n.widgets ?? []).filter((w) => w.name && !w.name.startsWith("$$") && w.type !== "button"
      && w.type !== "DOM" && w.options).map((w) => ({ name: w.name, type: w.type, value: w.value,
      values: Array.isArray(w.options?.values) ? w.options.values : null })),
    // socket inputs; a widget's own socket carries `widget`. An optional socket is drawn hollow
    inputs: (n.inputs ?? []).map((i) => ({ name: i.name, type: i.type, widget: i.widget?.name ?? null,
      shape: i.shape ?? null, linked: i.link != null })),
    optional: Object.keys(n.constructor.nodeData?.input?.optional ?? {}),
  }])));
  // set each value as the widget's own handler does when a user picks or types it
  await page.evaluate((edits) => {
    for (const [id, values] of Object.entries(edits)) {
      const node = window.app.graph.getNodeById(Number(id));
      for (const [name, value] of Object.entries(values)) {
        const w = node.widgets.find((x) => x.name === name);
        w.value = value;
        w.callback?.(w.value, window.app.canvas, node);
      }
    }
    window.app.graph.setDirtyCanvas(true, true);
  }, config.family_edits);
  await fitView(page);
  const posted = [];
  const onRequest = (r) => {
    if (r.method() === "POST" && new URL(r.url()).pathname.endsWith("/prompt")) posted.push(r.postDataJSON());
  };
  page.on("request", onRequest);
  await page.evaluate(async () => {
    const { api } = await import("/scripts/api.js");
    window.__lgFamily = { executed: [], errors: [], done: false };
    api.addEventListener("executed", (e) => window.__lgFamily.executed.push(e.detail));
    api.addEventListener("execution_error", (e) => { window.__lgFamily.errors.push(e.detail); window.__lgFamily.done = true; });
    api.addEventListener("execution_success", () => { window.__lgFamily.done = true; });
    await window.app.queuePrompt(0, 1);
  });
  await page.waitForFunction(() => window.__lgFamily.done, null, { timeout, polling: 250 });
  page.off("request", onRequest);
  family.queued = posted.map((body) => body.prompt);
  family.executed = await page.evaluate(() => window.__lgFamily.executed);
  family.errors = await page.evaluate(() => window.__lgFamily.errors);
  family.screenshot = path.join(config.screenshot_dir, "editor-families.png");
  await page.screenshot({ path: family.screenshot });
  return family;
}

async function waitForSummaries(page) {
  const handle = await page.waitForFunction(() => {
    const nodes = window.app.graph._nodes.filter((n) => n.comfyClass === "LoadLoRA");
    const done = nodes.every((n) => n.loragraph?.lastSummary);
    return done && nodes.length ? nodes.map((n) => ({
      id: n.id,
      lora_name: n.widgets.find((w) => w.name === "lora_name").value,
      text: n.loragraph.summary.textContent,
      lines: [...n.loragraph.summary.children].map((c) => c.textContent),
      visible: n.loragraph.summary.getBoundingClientRect().height > 0,
    })) : null;
  }, null, { timeout: 20000, polling: 100 });
  return handle.jsonValue();
}

/** Show the whole graph as large as the window allows (the frontend draws text only above ~60%). */
async function fitView(page) {
  await page.evaluate(() => {
    const canvas = window.app.canvas;
    const nodes = window.app.graph._nodes;
    if (!nodes.length) return;
    const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const n of nodes) {
      x0 = Math.min(x0, n.pos[0]);
      y0 = Math.min(y0, n.pos[1] - title - 24); // room for the badges above the title
      x1 = Math.max(x1, n.pos[0] + n.size[0]);
      y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const rect = canvas.canvas.getBoundingClientRect();
    const top = 150; // the menu bar and the run button
    const scale = Math.min(1.1, (rect.width - 120) / (x1 - x0), (rect.height - top - 40) / (y1 - y0));
    canvas.ds.scale = scale;
    canvas.ds.offset[0] = (rect.width / scale - (x1 - x0)) / 2 - x0;
    canvas.ds.offset[1] = top / scale - y0;
    canvas.setDirty(true, true);
    canvas.draw(true, true);
  });
  await page.waitForTimeout(300);
}

main().catch((e) => {
  console.log(JSON.stringify({ failure: String(e.stack || e) }));
  process.exit(1);
});
