// Takes the README's picture of the editor: the quickstart graph in ComfyUI's frontend, served by
// `loragraph serve` (tests/test_browser.py, test_the_readme_picture_of_the_editor).
//
//   node tests/browser/editor_screenshot.js <config.json>
//
// config: {url, workflow, screenshot, user_data_dir, chromium, timeout_ms}. It loads `workflow` (API
// format), fits it in view, waits for the LoadLoRA summaries, and saves one PNG. It prints one JSON
// object as its last line: the node classes shown, the summaries seen, or the failure.

"use strict";

const fs = require("fs");
const { chromium } = require("playwright-core");

async function main() {
  const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const out = {};
  const context = await chromium.launchPersistentContext(config.user_data_dir, {
    executablePath: config.chromium,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
    viewport: { width: 1600, height: 900 },
  });
  context.setDefaultTimeout(config.timeout_ms ?? 60000);
  const page = context.pages()[0] ?? (await context.newPage());
  try {
    await page.goto(config.url, { waitUntil: "load" });
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.LoadLoRA
      && window.app.canvas);
    // The starting graph loads first; a workflow loaded before it would be replaced by it.
    await page.waitForFunction(() => window.app.graph._nodes.length > 0, null, { timeout: 15000 }).catch(() => {});
    await page.evaluate((wf) => window.app.loadApiJson(wf, "quickstart"), config.workflow);
    await page.waitForFunction(() => window.app.graph._nodes.some((n) => n.comfyClass === "SaveImage"));
    // LoadLoRA's summary (format, rank, base model) is part of what the picture shows.
    out.summaries = await page.waitForFunction(() => {
      const nodes = window.app.graph._nodes.filter((n) => n.comfyClass === "LoadLoRA");
      return nodes.length && nodes.every((n) => n.loragraph?.lastSummary)
        ? nodes.map((n) => n.loragraph.summary.textContent) : null;
    }, null, { timeout: 20000, polling: 100 }).then((h) => h.jsonValue(), () => []);
    // Two rows of nodes in link order, so the graph is drawn large enough for its text to show.
    await page.evaluate(() => {
      const nodes = [...window.app.graph._nodes].sort((a, b) => a.id - b.id);
      let [x, y, rowHeight] = [0, 0, 0];
      nodes.forEach((n, i) => {
        if (i === 4) [x, y, rowHeight] = [160, y + rowHeight + 90, 0];
        n.pos = [x, y];
        x += n.size[0] + 60;
        rowHeight = Math.max(rowHeight, n.size[1]);
      });
      window.app.canvas.show_info = false;
    });
    // The whole graph as large as the window allows, below the menu bar (as editor_flow.js's fitView).
    await page.evaluate(() => {
      const canvas = window.app.canvas;
      const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
      let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
      for (const n of window.app.graph._nodes) {
        x0 = Math.min(x0, n.pos[0]);
        y0 = Math.min(y0, n.pos[1] - title - 24);
        x1 = Math.max(x1, n.pos[0] + n.size[0]);
        y1 = Math.max(y1, n.pos[1] + n.size[1]);
      }
      const rect = canvas.canvas.getBoundingClientRect();
      const top = 120;
      const scale = Math.min(1.1, (rect.width - 80) / (x1 - x0), (rect.height - top - 30) / (y1 - y0));
      canvas.ds.scale = scale;
      canvas.ds.offset[0] = (rect.width / scale - (x1 - x0)) / 2 - x0;
      canvas.ds.offset[1] = top / scale - y0;
      canvas.setDirty(true, true);
      canvas.draw(true, true);
    });
    await page.waitForTimeout(800);
    out.nodes = await page.evaluate(() => window.app.graph._nodes.map((n) => n.comfyClass));
    await page.screenshot({ path: config.screenshot });
    out.screenshot = config.screenshot;
  } catch (e) {
    out.failure = String(e.stack || e).slice(0, 3000);
  } finally {
    await context.close();
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.log(JSON.stringify({ failure: String(e.stack || e) }));
  process.exit(1);
});
