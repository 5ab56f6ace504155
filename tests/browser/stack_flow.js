// Drives LoRAStack's rows in ComfyUI's frontend, served by `loragraph serve` (tests/test_habits_browser.py).
//
//   node tests/browser/stack_flow.js <config.json>
//
// config: {url, workflow, rows: [{name, strength, te?, off?}], screenshot_dir, user_data_dir, chromium,
// timeout_ms}. It loads `workflow` (API format, with an empty LoRAStack), clicks "+ Add LoRA" once per
// row and types each row (name, strength, the folded text-encoder strength when given), turns the `off`
// rows off, hovers a row's name (the preview card), saves the workflow to the user's workflows
// (/userdata, as the editor's Save does), reloads the page, opens the saved workflow, reads the rows
// back, queues it and waits for the image. Prints one JSON object (the observations) as its last line.

"use strict";

const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const SAVED = "workflows/loragraph-stack.json";

async function boot(page, url) {
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.LoRAStack
    && window.app.canvas);
  await page.waitForFunction(() => [...document.querySelectorAll("style")].some((s) => s.id === "loragraph-style"));
}

/** Put the LoRAStack node in the middle of the view at scale 1, so its DOM rows are on screen. */
async function showStack(page) {
  await page.evaluate(() => {
    const canvas = window.app.canvas;
    const node = window.app.graph._nodes.find((n) => n.comfyClass === "LoRAStack");
    node.setSize([Math.max(node.size[0], 520), node.size[1]]);
    canvas.ds.scale = 1;
    canvas.ds.offset[0] = 200 - node.pos[0];
    canvas.ds.offset[1] = 250 - node.pos[1];
    canvas.setDirty(true, true);
    canvas.draw(true, true);
  });
  await page.waitForTimeout(400);
}

async function readRows(page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-loragraph="lora-row"]')].map((row) => {
    const field = (f) => row.querySelector(`[data-field="${f}"]`);
    return { on: field("on").checked, name: field("name").value, strength: Number(field("strength").value),
      te_shown: field("te").style.display !== "none", te: Number(field("te").value) };
  }));
}

async function main() {
  const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const timeout = config.timeout_ms ?? 60000;
  const out = { console_errors: [], page_errors: [], steps: [] };
  const t0 = Date.now();
  const step = (name) => out.steps.push([name, Date.now() - t0]);
  const context = await chromium.launchPersistentContext(config.user_data_dir, {
    executablePath: config.chromium, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1600, height: 1000 },
  });
  context.setDefaultTimeout(timeout);
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text().slice(0, 500)); });
  page.on("pageerror", (e) => out.page_errors.push(String(e.stack || e).slice(0, 1500)));
  const shot = async (name) => {
    fs.mkdirSync(config.screenshot_dir, { recursive: true });
    await page.screenshot({ path: path.join(config.screenshot_dir, `${name}.png`) });
  };
  try {
    await boot(page, config.url);
    step("booted");
    await page.evaluate((wf) => window.app.loadApiJson(wf, "stack"), config.workflow);
    await page.waitForFunction(() => document.querySelector('[data-loragraph="add-lora"]'));
    await showStack(page);
    out.textarea_hidden = await page.evaluate(() => {
      const node = window.app.graph._nodes.find((n) => n.comfyClass === "LoRAStack");
      const w = node.widgets.find((x) => x.name === "loras");
      const box = w.inputEl ?? w.element;
      return !box || box.style.display === "none" || box.offsetParent === null;
    });

    // -- three rows, typed as a user does ------------------------------------------------------------
    for (let i = 0; i < config.rows.length; i++) {
      await page.locator('[data-loragraph="add-lora"]').click();
      const row = page.locator('[data-loragraph="lora-row"]').nth(i);
      const spec = config.rows[i];
      await row.locator('[data-field="name"]').fill(spec.name);
      await row.locator('[data-field="name"]').press("Tab");
      await row.locator('[data-field="strength"]').fill(String(spec.strength));
      await row.locator('[data-field="strength"]').press("Tab");
      if (spec.te !== undefined) {
        await row.locator('[data-field="fold"]').click();
        const te = page.locator('[data-loragraph="lora-row"]').nth(i).locator('[data-field="te"]');
        await te.fill(String(spec.te));
        await te.press("Tab");
      }
    }
    for (let i = 0; i < config.rows.length; i++) {
      if (config.rows[i].off) {
        await page.locator('[data-loragraph="lora-row"]').nth(i).locator('[data-field="on"]').click();
      }
    }
    out.rows_typed = await readRows(page);
    out.loras_text = await page.evaluate(() => window.app.graph._nodes.find((n) => n.comfyClass === "LoRAStack")
      .widgets.find((w) => w.name === "loras").value);
    step("rows typed");

    // -- hovering a row's name shows its preview and trigger words ------------------------------------
    await page.locator('[data-loragraph="lora-row"]').nth(0).locator('[data-field="name"]').hover();
    await page.waitForFunction(() => document.querySelector('[data-loragraph="trigger-words"]'), null,
      { timeout: 15000 }).catch(() => {});
    await page.waitForFunction(() => {
      const img = document.querySelector('[data-loragraph="lora-preview"]');
      return !img || (img.complete && img.naturalWidth > 0);
    }, null, { timeout: 15000 }).catch(() => {});
    out.card = await page.evaluate(() => {
      const card = document.querySelector('[data-loragraph="lora-card"]');
      const img = card?.querySelector('[data-loragraph="lora-preview"]');
      return { shown: card?.style.display === "block", name: card?.dataset.name ?? null,
        words: card?.querySelector('[data-loragraph="trigger-words"]')?.textContent ?? null,
        preview_width: img?.naturalWidth ?? 0 };
    });
    await shot("stack-rows");
    await page.mouse.move(5, 5);

    // ... and so does hovering a LoRA in a LoRA combo's menu (LoadLoRA's lora_name)
    const combo = await page.evaluate(() => {
      const canvas = window.app.canvas;
      const node = window.app.graph._nodes.find((n) => n.comfyClass === "LoadLoRA");
      if (!node) return null;
      const widget = node.widgets.find((w) => w.name === "lora_name");
      const y = widget.y ?? widget.last_y;
      const [cx, cy] = canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] + y + 10]);
      const rect = canvas.canvas.getBoundingClientRect();
      return { x: rect.left + cx, y: rect.top + cy };
    });
    if (combo) {
      await page.mouse.click(combo.x, combo.y);
      const entry = page.locator(".litecontextmenu .litemenu-entry", { hasText: "ink.safetensors" }).first();
      await entry.waitFor({ timeout: 10000 });
      await entry.hover();
      await page.waitForFunction(() => document.querySelector('[data-loragraph="lora-card"]')?.style.display === "block"
        && document.querySelector('[data-loragraph="trigger-words"]'), null, { timeout: 10000 }).catch(() => {});
      out.combo_card = await page.evaluate(() => {
        const card = document.querySelector('[data-loragraph="lora-card"]');
        return { shown: card?.style.display === "block", name: card?.dataset.name ?? null,
          words: card?.querySelector('[data-loragraph="trigger-words"]')?.textContent ?? null };
      });
      await shot("combo-hover");
      await page.keyboard.press("Escape");
      await page.mouse.click(5, 500);
    }
    step("hover");

    // -- save, reload, open the saved workflow -----------------------------------------------------
    const saved = await page.evaluate(async (file) => {
      const { api } = await import("/scripts/api.js");
      const graph = window.app.graph.serialize();
      const res = await api.storeUserData(file, JSON.stringify(graph), { overwrite: true, stringify: false });
      return { status: res.status, graph };
    }, SAVED);
    out.save_status = saved.status;
    await page.reload({ waitUntil: "load" });
    await boot(page, config.url);
    await page.evaluate(async (file) => {
      const { api } = await import("/scripts/api.js");
      const res = await api.getUserData(file);
      await window.app.loadGraphData(await res.json());
    }, SAVED);
    await page.waitForFunction(() => document.querySelectorAll('[data-loragraph="lora-row"]').length > 0);
    await showStack(page);
    out.rows_reloaded = await readRows(page);
    out.loras_text_reloaded = await page.evaluate(() => window.app.graph._nodes
      .find((n) => n.comfyClass === "LoRAStack").widgets.find((w) => w.name === "loras").value);
    step("reloaded");

    // -- queue it -----------------------------------------------------------------------------------
    out.prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
    await page.evaluate(async () => {
      const { api } = await import("/scripts/api.js");
      window.__lg = { executed: [], errors: [] };
      api.addEventListener("executed", (e) => window.__lg.executed.push(e.detail));
      api.addEventListener("execution_error", (e) => window.__lg.errors.push(e.detail));
      await window.app.queuePrompt(0, 1);
    });
    await page.waitForFunction(() => window.__lg.errors.length
      || window.__lg.executed.some((d) => d.output?.images?.length), null, { timeout, polling: 250 });
    out.executed = await page.evaluate(() => window.__lg.executed);
    out.execution_errors = await page.evaluate(() => window.__lg.errors);
    await shot("stack-queued");
    step("executed");
  } catch (e) {
    out.failure = String(e.stack || e).slice(0, 3000);
    await shot("stack-failure").catch(() => {});
  } finally {
    await context.close();
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.log(JSON.stringify({ failure: String(e.stack || e) }));
  process.exit(1);
});
