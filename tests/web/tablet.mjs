#!/usr/bin/env node
// End-to-end test of the tablet page (web/) in headless Chromium against the real device.
//
//   node tests/web/tablet.mjs          (after `npm ci`; from any directory)
//
// The page: $TABLET_URL when set (e.g. a development server with `?broker=...&prefix=...`),
// else the command $TABLET_DEMO_CMD is started (a shell command run from the repository root,
// with $TABLET_TMP a fresh temporary folder; default below) and the URL is read from the first
// stdout line matching `tablet page: (http...)`; the command is stopped at the end (SIGINT, then
// SIGKILL). The browser: $CHROMIUM, default /usr/bin/chromium.
//
// The test talks to the same broker as the page (an MQTT client of its own) to read the retained
// status, check what the page publishes and inject one stream error. It prints one line per check
// and `N passed, N failed`; the exit status is 1 on any failure.

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import mqtt from 'mqtt';
import { chromium } from 'playwright-core';

import { loadConfig } from '../../web/config.js';
import { deviceTopics } from '../../web/connection.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DEFAULT_DEMO_CMD = '"${CARGO_TARGET_DIR:-target}"/release/mcm-edge demo --out "$TABLET_TMP/demo" --serve 127.0.0.1:0';
const PAGE_URL_LINE = /tablet page: (http\S+)/;
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const GENERATE_TIMEOUT_MS = 60_000;
const LIVE_INTERVAL_MS = 400;

let passed = 0;
let failed = 0;
const cleanups = [];

/** Run one check; the first failure stops the test (later checks build on earlier state). */
async function check(name, body) {
  try {
    const detail = await body();
    passed++;
    console.log(`ok ${passed} - ${name}${detail ? `: ${detail}` : ''}`);
  } catch (error) {
    failed++;
    console.log(`not ok ${passed + failed} - ${name}: ${error.message}`);
    throw error;
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- device, broker, browser

/** The page URL, and a function that stops what was started for it; `command` defaults to
 *  $TABLET_DEMO_CMD, else the release build's demo. */
async function startDevice(command = process.env.TABLET_DEMO_CMD ?? DEFAULT_DEMO_CMD) {
  if (process.env.TABLET_URL) return { url: process.env.TABLET_URL, output: () => '' };
  const tmp = mkdtempSync(join(tmpdir(), 'tablet-'));
  const child = spawn(command, {
    cwd: ROOT,
    shell: true,
    detached: true, // its own process group: the shell and the device stop together
    env: { ...process.env, TABLET_TMP: tmp },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = [];
  const keep = (line) => {
    lines.push(line);
    if (lines.length > 40) lines.shift();
  };
  createInterface({ input: child.stderr }).on('line', keep);
  const stdout = createInterface({ input: child.stdout });
  cleanups.push(async () => {
    await stopGroup(child);
    rmSync(tmp, { recursive: true, force: true });
  });
  const url = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "tablet page:" line from \`${command}\` within 90 s`)), 90_000);
    stdout.on('line', (line) => {
      keep(line);
      const match = PAGE_URL_LINE.exec(line);
      if (match) {
        clearTimeout(timer);
        resolveUrl(match[1]);
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`\`${command}\` exited (${code ?? signal}) before printing the page URL:\n${lines.join('\n')}`));
    });
  });
  return { url, output: () => lines.join('\n') };
}

/** SIGINT to the command's process group, SIGKILL to what is left of it after 5 s. */
async function stopGroup(child) {
  const alive = () => {
    try {
      process.kill(-child.pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (!alive()) return;
  process.kill(-child.pid, 'SIGINT');
  const deadline = Date.now() + 5000;
  while (alive() && Date.now() < deadline) await sleep(100);
  if (alive()) process.kill(-child.pid, 'SIGKILL');
}

/** An MQTT client on the page's broker that records what it receives. */
async function observe(config) {
  const client = mqtt.connect(config.brokerUrl, { protocolVersion: config.protocol, clean: true, reconnectPeriod: 0 });
  cleanups.push(() => new Promise((r) => client.end(true, {}, r)));
  await new Promise((resolveConnect, reject) => {
    client.once('connect', resolveConnect);
    client.once('error', reject);
  });
  const topics = deviceTopics(config.prefix);
  const seen = { status: null, requests: [], frames: [], streamImages: [] };
  client.on('message', (topic, payload) => {
    if (topic === topics.status) seen.status = JSON.parse(payload.toString());
    else if (topic === topics.request) seen.requests.push(JSON.parse(payload.toString()));
    else if (topic === topics.streamImage) seen.streamImages.push({ at: Date.now() });
    else if (topic.startsWith(topics.framePrefix)) seen.frames.push({ modality: topic.slice(topics.framePrefix.length), at: Date.now(), payload });
  });
  await client.subscribeAsync([topics.status, topics.request, `${topics.framePrefix}+`, topics.streamImage], { qos: 1 });
  return { client, topics, seen };
}

async function launchBrowser() {
  const root = process.getuid?.() === 0;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: root ? ['--no-sandbox'] : [],
  });
  cleanups.push(() => browser.close());
  return browser;
}

/** A page with its console errors and uncaught exceptions collected. */
async function openPage(context, url) {
  const page = await context.newPage();
  page.problems = [];
  page.on('console', (m) => m.type() === 'error' && page.problems.push(`console: ${m.text()}`));
  page.on('pageerror', (e) => page.problems.push(`exception: ${e.message}`));
  await page.goto(url, { waitUntil: 'load' });
  return page;
}

// ---------------------------------------------------------------- canvas helpers

const SEG = 'layer-segmentation';
const SKETCH = 'layer-sketch';

/** RGBA of the working-resolution pixel (x, y) of a layer canvas. */
function pixel(page, id, x, y) {
  return page.evaluate(([id, x, y]) => [...document.getElementById(id).getContext('2d').getImageData(x, y, 1, 1).data], [id, x, y]);
}

/** FNV-1a hash of all pixels of a layer: equal hashes = equal pictures (for undo / redo). */
function layerHash(page, id) {
  return page.evaluate((id) => {
    const c = document.getElementById(id);
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let h = 2166136261;
    for (let i = 0; i < d.length; i++) h = Math.imul(h ^ d[i], 16777619);
    return h >>> 0;
  }, id);
}

/** Keep a copy of a layer in the page, to count changed pixels later. */
function saveLayer(page, id) {
  return page.evaluate((id) => {
    const c = document.getElementById(id);
    (window.__saved ??= {})[id] = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  }, id);
}

function changedPixels(page, id) {
  return page.evaluate((id) => {
    const c = document.getElementById(id);
    const now = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const before = window.__saved[id];
    let n = 0;
    for (let i = 0; i < now.length; i += 4) {
      if (now[i] !== before[i] || now[i + 1] !== before[i + 1] || now[i + 2] !== before[i + 2] || now[i + 3] !== before[i + 3]) n++;
    }
    return n;
  }, id);
}

/** Working-resolution points -> viewport points of the stage. */
async function toViewport(page, points) {
  const box = await page.locator('#stage').boundingBox();
  const size = await page.evaluate(() => document.getElementById('layer-segmentation').width);
  return points.map(([x, y]) => ({ x: box.x + (x / size) * box.width, y: box.y + (y / size) * box.height }));
}

/** A mouse stroke through the points (working pixels); `pauseMs` between points. */
async function mouseStroke(page, points, pauseMs = 0) {
  const [first, ...rest] = await toViewport(page, points);
  await page.mouse.move(first.x, first.y);
  await page.mouse.down();
  for (const p of rest) {
    await page.mouse.move(p.x, p.y, { steps: 4 });
    if (pauseMs) await sleep(pauseMs);
  }
  await page.mouse.up();
}

/** A pen stroke with a constant pressure, through CDP (pointerType "pen"). */
async function penStroke(page, cdp, points, force) {
  const vp = await toViewport(page, points);
  const send = (type, p, buttons) =>
    cdp.send('Input.dispatchMouseEvent', { type, x: p.x, y: p.y, button: 'left', buttons, clickCount: 1, pointerType: 'pen', force });
  await send('mouseMoved', vp[0], 0);
  await send('mousePressed', vp[0], 1);
  for (const p of vp.slice(1)) await send('mouseMoved', p, 1);
  await send('mouseReleased', vp.at(-1), 0);
}

/** A one-finger touch stroke, through CDP (pointerType "touch"). */
async function touchStroke(page, cdp, points) {
  const vp = await toViewport(page, points);
  const touch = (p) => [{ x: p.x, y: p.y, id: 1, radiusX: 4, radiusY: 4, force: 1 }];
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: touch(vp[0]) });
  for (const p of vp.slice(1)) await cdp.send('Input.dispatchTouchEvent', { type: 'touchMove', touchPoints: touch(p) });
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] });
}

const line = (x0, y0, x1, y1, n = 12) => Array.from({ length: n + 1 }, (_, i) => [x0 + ((x1 - x0) * i) / n, y0 + ((y1 - y0) * i) / n]);
const sameRgb = (p, rgb) => p[3] === 255 && p.slice(0, 3).every((v, i) => v === rgb[i]);

function isPng(bytes) {
  return PNG_SIGNATURE.every((b, i) => bytes[i] === b);
}

/** Width, height and colour type from a PNG's IHDR. */
function pngHeader(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20), colourType: bytes[25] };
}

/** Wait for `locator`, failing early when the page shows an error (other than `ignored`). */
async function waitUnlessError(page, locator, timeout, ignored = null) {
  let error = page.locator('#error:visible');
  if (ignored) error = error.filter({ hasNotText: ignored });
  const winner = await Promise.race([
    locator.waitFor({ timeout }).then(() => 'ok'),
    error.waitFor({ timeout }).then(() => 'error'),
  ]);
  if (winner === 'error') throw new Error(`the page shows an error: ${await error.textContent()}`);
}

/** Natural size of the shown result image. */
function resultSize(page) {
  return page.locator('#result-image').evaluate((img) => img.decode().then(() => [img.naturalWidth, img.naturalHeight]));
}

/** Poll `condition` (async) until true or `timeout` ms have passed. */
async function until(condition, timeout, what) {
  const end = Date.now() + timeout;
  while (!(await condition())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// ---------------------------------------------------------------- the checks

/** How the page finds the broker (web/config.js), without a browser. */
async function configChecks() {
  await check('broker URL and prefix from config.json or the query string', async () => {
    const json = { device_id: 'edge-9', topic_prefix: 'mcm/edge-9/', broker: { url: null, port: 9001, path: '/mqtt' }, mqtt_protocol: 4 };
    const cases = [
      ['http://board.local:8080/', json, 'ws://board.local:9001/mqtt', 'mcm/edge-9/'],
      ['https://board.local/', json, 'wss://board.local:9001/mqtt', 'mcm/edge-9/'],
      ['http://[::1]:8080/', json, 'ws://[::1]:9001/mqtt', 'mcm/edge-9/'],
      ['http://board.local/', { ...json, broker: { url: 'wss://broker.example/ws', port: 9001, path: '/mqtt' } }, 'wss://broker.example/ws', 'mcm/edge-9/'],
      ['http://board.local/?broker=ws://127.0.0.1:9001/mqtt&prefix=mcm/dev', null, 'ws://127.0.0.1:9001/mqtt', 'mcm/dev/'],
    ];
    for (const [page, served, brokerUrl, prefix] of cases) {
      const fetchJson = async () => {
        assert(served, `${page}: config.json fetched although the query gives broker and prefix`);
        return served;
      };
      const config = await loadConfig(new URL(page), fetchJson);
      assert(config.brokerUrl === brokerUrl && config.prefix === prefix && config.protocol === 4, `${page}: ${JSON.stringify(config)}`);
    }
    return `${cases.length} cases`;
  });
}

async function desktopChecks(browser, url, config, broker) {
  const context = await browser.newContext({ viewport: { width: 1024, height: 768 }, acceptDownloads: true });
  const page = await openPage(context, url);
  const cdp = await context.newCDPSession(page);

  await check('page loads at 1024x768 with no console errors', async () => {
    await page.waitForLoadState('networkidle');
    assert(page.problems.length === 0, page.problems.join('; '));
    return await page.title();
  });

  await check('connects to the broker', async () => {
    await page.locator('#broker-state', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
    return config.brokerUrl;
  });

  await check('device state shows online', async () => {
    await page.locator('#device-state', { hasText: 'online' }).waitFor({ timeout: 30_000 });
    const queue = await page.locator('#device-queue').textContent();
    assert(/queue \d+\/\d+/.test(queue), `queue shown as "${queue}"`);
    return `${await page.locator('#device-state').textContent()}, ${queue}`;
  });

  const status = broker.seen.status;
  const segmentation = status?.modalities?.find((m) => m.kind === 'segmentation');
  const sketchModality = status?.modalities?.find((m) => m.kind === 'sketch');
  const classes = segmentation?.classes ?? [];

  await check('swatches carry the class names and colours of the status', async () => {
    assert(classes.length >= 3, `status has ${classes.length} segmentation classes (need 3)`);
    const swatches = page.getByRole('group', { name: 'Classes' }).getByRole('button');
    await swatches.first().waitFor();
    const names = await swatches.allInnerTexts();
    assert(JSON.stringify(names.map((n) => n.trim())) === JSON.stringify(classes.map((c) => c.name)), `swatches ${names} != status ${classes.map((c) => c.name)}`);
    const colours = await page.locator('.swatch-chip').evaluateAll((chips) => chips.map((c) => getComputedStyle(c).backgroundColor));
    classes.forEach((c, i) => assert(colours[i] === `rgb(${c.color.join(', ')})`, `swatch ${c.name}: ${colours[i]}`));
    const dense = status.modalities.filter((m) => m.kind === 'dense').map((m) => m.name);
    const note = await page.locator('#modalities').textContent();
    for (const name of dense) assert(note.includes(name) && note.includes('not available'), `dense ${name} not shown as unavailable: "${note}"`);
    return `${names.join(', ')}${dense.length ? `; not drawable: ${dense.join(', ')}` : ''}`;
  });

  await check('drawing and result side by side, canvas in view', async () => {
    const stage = await page.locator('#stage').boundingBox();
    const result = await page.locator('.result-frame').boundingBox();
    assert(stage.x + stage.width <= result.x, 'the result is not beside the drawing');
    assert(stage.y + stage.height <= 768 && stage.width >= 300, `canvas ${Math.round(stage.width)}px at y ${Math.round(stage.y)}`);
    return `canvas ${Math.round(stage.width)}px, result ${Math.round(result.width)}px`;
  });

  await check('segmentation layer starts with the first class', async () => {
    for (const [x, y] of [[2, 2], [256, 256], [509, 509]]) {
      const p = await pixel(page, SEG, x, y);
      assert(sameRgb(p, classes[0].color), `pixel (${x},${y}) = ${p}`);
    }
    return classes[0].name;
  });

  const blank = await layerHash(page, SEG);
  await check('a mouse stroke paints the selected class', async () => {
    await page.getByRole('button', { name: classes[1].name }).click();
    await saveLayer(page, SEG);
    await mouseStroke(page, line(100, 150, 400, 150));
    const changed = await changedPixels(page, SEG);
    const centre = await pixel(page, SEG, 250, 150);
    assert(sameRgb(centre, classes[1].color), `stroke centre = ${centre}`);
    assert(changed > 5000, `${changed} pixels changed`);
    return `${changed} pixels of ${classes[1].name}`;
  });

  const stroked = await layerHash(page, SEG);
  let filled;
  await check('fill changes the clicked region only', async () => {
    await page.getByRole('radio', { name: 'Fill' }).check();
    await page.getByRole('button', { name: classes[2].name }).click();
    await saveLayer(page, SEG);
    const [p] = await toViewport(page, [[250, 150]]);
    await page.mouse.click(p.x, p.y);
    const changed = await changedPixels(page, SEG);
    for (const [x, y] of [[250, 150], [110, 150], [390, 145]]) {
      const q = await pixel(page, SEG, x, y);
      assert(sameRgb(q, classes[2].color), `(${x},${y}) = ${q} after the fill`);
    }
    const outside = await pixel(page, SEG, 250, 300);
    assert(sameRgb(outside, classes[0].color), `outside the region: ${outside}`);
    assert(changed > 5000 && changed < 20_000, `${changed} pixels changed`);
    filled = await layerHash(page, SEG);
    return `${changed} pixels of ${classes[2].name}`;
  });

  await check('undo restores the previous pixels, redo re-applies (buttons and keys)', async () => {
    const expect = async (hash, what) => assert((await layerHash(page, SEG)) === hash, `not ${what}`);
    await page.getByRole('button', { name: 'Undo' }).click();
    await expect(stroked, 'the stroke after one undo');
    await page.keyboard.press('Control+z');
    await expect(blank, 'the blank map after two undos');
    await page.getByRole('button', { name: 'Redo' }).click();
    await expect(stroked, 'the stroke after a redo');
    await page.keyboard.press('Control+Shift+z');
    await expect(filled, 'the fill after Ctrl+Shift+Z');
    await page.keyboard.press('Control+z');
    await expect(stroked, 'the stroke after Ctrl+Z');
    await page.keyboard.press('Control+y');
    await expect(filled, 'the fill after Ctrl+Y');
    assert(await page.getByRole('button', { name: 'Redo' }).isDisabled(), 'redo still enabled at the newest step');
    return 'Undo, Ctrl+Z, Redo, Ctrl+Shift+Z, Ctrl+Y';
  });

  await check('the segmentation eraser paints the first class back', async () => {
    await page.getByRole('radio', { name: 'Eraser' }).check();
    await mouseStroke(page, line(200, 150, 300, 150, 4));
    const erased = await pixel(page, SEG, 250, 150);
    assert(sameRgb(erased, classes[0].color), `erased pixel ${erased}`);
    await page.getByRole('button', { name: 'Undo' }).click();
    assert((await layerHash(page, SEG)) === filled, 'undo did not bring the fill back');
    return classes[0].name;
  });

  await check('sketch layer: dark strokes over the map, eraser removes them, clear empties it', async () => {
    await page.getByRole('radio', { name: 'Sketch' }).check();
    await page.getByRole('radio', { name: 'Brush' }).check();
    const map = await layerHash(page, SEG);
    const empty = await layerHash(page, SKETCH);
    await mouseStroke(page, line(80, 80, 430, 430));
    const ink = await pixel(page, SKETCH, 256, 256);
    assert(ink[3] === 255 && ink.slice(0, 3).every((v) => v < 80), `stroke pixel ${ink}`);
    assert((await pixel(page, SKETCH, 420, 90))[3] === 0, 'the sketch background is not transparent');
    assert((await layerHash(page, SEG)) === map, 'the sketch stroke changed the map');
    await page.getByRole('radio', { name: 'Eraser' }).check();
    await mouseStroke(page, line(100, 100, 180, 180, 6));
    const erased = await pixel(page, SKETCH, 140, 140);
    const kept = await pixel(page, SKETCH, 350, 350);
    assert(erased[3] === 0 && kept[3] === 255, `erased ${erased}, kept ${kept}`);
    const drawn = await layerHash(page, SKETCH);
    await page.getByRole('button', { name: 'Clear layer' }).click();
    assert((await layerHash(page, SKETCH)) === empty, 'Clear layer left something on the sketch');
    assert((await layerHash(page, SEG)) === map, 'Clear layer on the sketch changed the map');
    await page.keyboard.press('Control+z');
    assert((await layerHash(page, SKETCH)) === drawn, 'undo did not bring the cleared sketch back');
    await page.getByRole('radio', { name: 'Brush' }).check();
    return `ink rgb(${ink.slice(0, 3)})`;
  });

  await check('a pen stroke paints, its pressure sets the width', async () => {
    await page.getByRole('button', { name: classes[1].name }).click();
    await saveLayer(page, SEG);
    await penStroke(page, cdp, line(60, 420, 200, 420), 0.15);
    const light = await changedPixels(page, SEG);
    await saveLayer(page, SEG);
    await penStroke(page, cdp, line(60, 470, 200, 470), 1.0);
    const heavy = await changedPixels(page, SEG);
    assert(light > 200 && heavy > 1.8 * light, `light ${light} px, heavy ${heavy} px`);
    return `${light} px at pressure 0.15, ${heavy} px at 1.0`;
  });

  let steps;
  await check('generation controls follow the status', async () => {
    const g = status.generation;
    if (g?.sample_steps) {
      const options = await page.locator('#steps-select option').allTextContents();
      assert(JSON.stringify(options.map(Number)) === JSON.stringify(g.sample_steps), `steps options ${options}`);
    }
    const strength = Number(await page.locator('#strength').inputValue());
    if (g) assert(Math.abs(strength - g.strength) < 1e-6, `strength ${strength}, status ${g.strength}`);
    steps = Number(await page.getByRole(g?.sample_steps ? 'combobox' : 'spinbutton', { name: 'Steps' }).inputValue());
    const promptShown = await page.locator('#prompt-row').isVisible();
    assert(promptShown === Boolean(g?.text), `prompt field ${promptShown ? 'shown' : 'hidden'} for a model with text = ${g?.text}`);
    return g ? `steps ${steps}, strength ${strength}, prompt field ${promptShown ? 'shown' : 'hidden'}` : `no generation block: fallback steps ${steps}, strength ${strength}`;
  });

  const results = [];
  await check('generate: the image appears beside the drawing and in the history', async () => {
    await page.getByRole('checkbox', { name: 'Random seed' }).uncheck();
    await page.getByRole('spinbutton', { name: 'Seed' }).fill('7');
    await page.evaluate(() => {
      const spinner = document.getElementById('spinner');
      window.__spinnerSeen = false;
      new MutationObserver(() => (window.__spinnerSeen ||= !spinner.hidden)).observe(spinner, { attributes: true });
    });
    const started = Date.now();
    await page.getByRole('button', { name: 'Generate' }).click();
    await waitUnlessError(page, page.locator('#result-image[data-source="request"]:visible'), GENERATE_TIMEOUT_MS);
    const ms = Date.now() - started;
    const size = await resultSize(page);
    assert(await page.evaluate(() => window.__spinnerSeen), 'no pending state was shown');
    assert((await page.locator('#history li').count()) === 1, 'not in the history');
    assert(size[0] === status.model.image_size, `image ${size} for a model of ${status.model.image_size}px`);
    // mosquitto's WebSocket side can deliver a large message after a small one sent later.
    await until(async () => broker.seen.requests.length > 0, 10_000, 'the request on P/request');
    const request = broker.seen.requests.at(-1);
    assert(/^[A-Za-z0-9_-]{1,128}$/.test(request?.id ?? ''), `request id ${request?.id}`);
    assert(request.seed === 7 && request.steps === steps && typeof request.strength === 'number', `request ${JSON.stringify({ ...request, frames: undefined })}`);
    const seg = Buffer.from(request.frames[segmentation.name], 'base64');
    const sketch = Buffer.from(request.frames[sketchModality.name] ?? '', 'base64');
    assert(isPng(seg) && pngHeader(seg).width === 512, 'segmentation frame is not a 512px PNG');
    assert(isPng(sketch) && pngHeader(sketch).colourType === 6, 'sketch frame is not an RGBA PNG');
    results.push(await page.locator('#result-image').getAttribute('src'));
    return `${size[0]}x${size[1]} in ${ms} ms, request ${request.id} (seed 7, ${steps} steps, frames ${Object.keys(request.frames)})`;
  });

  await check('history: a second result, a click shows the first again', async () => {
    await page.getByRole('spinbutton', { name: 'Seed' }).fill('8');
    await page.getByRole('button', { name: 'Generate' }).click();
    await waitUnlessError(page, page.locator('#history li').nth(1), GENERATE_TIMEOUT_MS);
    const newest = await page.locator('#result-image').getAttribute('src');
    assert(newest !== results[0], 'the second result is not shown');
    await page.locator('#history li').nth(1).getByRole('button').click();
    assert((await page.locator('#result-image').getAttribute('src')) === results[0], 'the first result is not shown again');
    return `${await page.locator('#history li').count()} thumbnails`;
  });

  await check('random seed: the page draws it, sends it and shows it', async () => {
    await page.getByRole('checkbox', { name: 'Random seed' }).check();
    const before = broker.seen.requests.length;
    await page.getByRole('button', { name: 'Generate' }).click();
    await waitUnlessError(page, page.locator('#history li').nth(2), GENERATE_TIMEOUT_MS);
    await until(async () => broker.seen.requests.length > before, 10_000, 'the request on P/request');
    const request = broker.seen.requests.at(-1);
    const shown = Number(await page.getByRole('spinbutton', { name: 'Seed' }).inputValue());
    assert(Number.isInteger(request.seed) && request.seed === shown, `request seed ${request.seed}, field ${shown}`);
    await page.getByRole('checkbox', { name: 'Random seed' }).uncheck();
    return `seed ${request.seed}`;
  });

  await check('a sketch alone (map cleared) is a sketch-only request', async () => {
    await page.getByRole('radio', { name: 'Segmentation' }).check();
    await page.getByRole('button', { name: 'Clear layer' }).click();
    await page.getByRole('radio', { name: 'Sketch' }).check();
    await page.getByRole('radio', { name: 'Brush' }).check();
    await mouseStroke(page, line(100, 300, 400, 300));
    const before = broker.seen.requests.length;
    await page.getByRole('button', { name: 'Generate' }).click();
    await waitUnlessError(page, page.locator('#history li').nth(3), GENERATE_TIMEOUT_MS);
    await until(async () => broker.seen.requests.length > before, 10_000, 'the request on P/request');
    const keys = Object.keys(broker.seen.requests.at(-1).frames);
    assert(keys.length === 1 && keys[0] === sketchModality.name, `frames ${keys}`);
    await page.getByRole('radio', { name: 'Segmentation' }).check();
    return `frames ${keys}`;
  });

  await check('download PNG of the shown result', async () => {
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download PNG' }).click()]);
    const bytes = readFileSync(await download.path());
    assert(isPng(bytes), 'the download is not a PNG');
    assert(download.suggestedFilename().endsWith('.png'), download.suggestedFilename());
    return `${download.suggestedFilename()}, ${bytes.length} bytes`;
  });

  await check('an error without id (the stream\'s) is shown beside the drawing', async () => {
    const error = { id: null, code: 'test_stream_error', message: 'injected by tests/web/tablet.mjs' };
    await broker.client.publishAsync(broker.topics.error, JSON.stringify(error), { qos: 1 });
    const box = page.getByRole('alert');
    await box.filter({ hasText: 'test_stream_error' }).waitFor({ timeout: 10_000 });
    const alert = await box.boundingBox();
    const stage = await page.locator('#stage').boundingBox();
    assert(alert.x >= stage.x + stage.width && alert.y < 768, 'the error is not beside the drawing');
    return await box.textContent();
  });

  await check('live mode: painting streams throttled frames, the device answers on the stream', async () => {
    const enabledAt = Date.now();
    await page.getByRole('checkbox', { name: 'Live mode' }).check();
    await until(async () => new Set(broker.seen.frames.filter((f) => f.at >= enabledAt).map((f) => f.modality)).size >= 2, 10_000, 'both layers sent when live mode is turned on');
    await page.getByRole('radio', { name: 'Segmentation' }).check();
    await page.getByRole('button', { name: classes[3].name }).click();
    const from = Date.now();
    await mouseStroke(page, line(60, 300, 460, 300, 20), 100);
    const to = Date.now();
    // The device answers the stroke's frames on the stream (or the page shows its error).
    const refused = page.locator('#error:visible').filter({ hasNotText: 'test_stream_error' });
    await until(async () => broker.seen.streamImages.some((i) => i.at > to) || (await refused.count()) > 0, 30_000, 'a stream image after the stroke');
    await sleep(1000); // frames still on their way here (the broker's WebSocket side can lag)
    const frames = broker.seen.frames.filter((f) => f.modality === segmentation.name && f.at >= from);
    // Arrival times here are not publish times, so the throttle is checked by count: one frame
    // per ~400 ms of the stroke, plus the first and the final one.
    const limit = Math.floor((to - from) / LIVE_INTERVAL_MS) + 2;
    assert(frames.length >= 3 && frames.length <= limit, `${frames.length} frames in ${to - from} ms (expected 3..${limit})`);
    assert(frames.every((f) => isPng(f.payload)), 'a frame is not a PNG');
    await waitUnlessError(page, page.locator('#result-image[data-source="stream"]:visible'), 10_000, 'test_stream_error');
    const size = await resultSize(page);
    assert(!(await page.locator('#error').isVisible()), 'the stale error is still shown after a stream image');
    await page.getByRole('checkbox', { name: 'Live mode' }).uncheck();
    return `${frames.length} frames in ${to - from} ms, stream image ${size[0]}x${size[1]}`;
  });

  await check('no console errors on the desktop page', async () => {
    assert(page.problems.length === 0, page.problems.join('; '));
  });
  await context.close();
}

async function phoneChecks(browser, url) {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const page = await openPage(context, url);
  const cdp = await context.newCDPSession(page);

  await check('phone 390x844: no horizontal overflow, canvas and Generate reachable', async () => {
    await page.locator('#broker-state', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
    await page.locator('.swatch').first().waitFor({ timeout: 15_000 });
    const overflow = await page.evaluate(() => {
      const width = document.documentElement.clientWidth;
      const wide = [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > width + 0.5 && e.getClientRects().length > 0);
      return { scroll: document.documentElement.scrollWidth, width, wide: wide.map((e) => e.id || e.className || e.tagName).slice(0, 5) };
    });
    assert(overflow.scroll <= overflow.width && overflow.wide.length === 0, `scrollWidth ${overflow.scroll} > ${overflow.width}: ${overflow.wide}`);
    const stage = await page.locator('#stage').boundingBox();
    assert(stage.width >= 300 && stage.x >= 0 && stage.x + stage.width <= 390, `canvas ${JSON.stringify(stage)}`);
    const generate = page.getByRole('button', { name: 'Generate' });
    await generate.scrollIntoViewIfNeeded();
    const box = await generate.boundingBox();
    assert((await generate.isVisible()) && box.x >= 0 && box.x + box.width <= 390, 'Generate is not reachable');
    return `canvas ${Math.round(stage.width)}px wide, page ${overflow.scroll}px`;
  });

  await check('a touch stroke (pointerType "touch") paints', async () => {
    await page.locator('#stage').scrollIntoViewIfNeeded();
    await page.evaluate(() => {
      window.__pointerTypes = [];
      document.getElementById('stage').addEventListener('pointerdown', (e) => window.__pointerTypes.push(e.pointerType));
    });
    await page.locator('.swatch').nth(1).tap();
    await page.locator('#stage').scrollIntoViewIfNeeded();
    await saveLayer(page, SEG);
    await touchStroke(page, cdp, line(80, 256, 430, 256));
    const changed = await changedPixels(page, SEG);
    const types = await page.evaluate(() => window.__pointerTypes);
    assert(types.includes('touch'), `pointer types ${types}`);
    assert(changed > 3000, `${changed} pixels changed`);
    return `${changed} pixels`;
  });

  await check('no console errors on the phone page', async () => {
    assert(page.problems.length === 0, page.problems.join('; '));
  });
  await context.close();
}

/** A text-conditional model (models/tiny-sd, contract 2): the prompt and guidance fields appear,
 *  and the request carries them. */
async function textModelChecks(browser) {
  const device = await startDevice('"${CARGO_TARGET_DIR:-target}"/release/mcm-edge demo --model models/tiny-sd --steps 3 --out "$TABLET_TMP/demo" --serve 127.0.0.1:0');
  const config = await loadConfig(new URL(device.url), () => fetch(new URL('config.json', device.url)).then((r) => r.json()));
  const broker = await observe(config);
  const context = await browser.newContext({ viewport: { width: 1024, height: 768 } });
  const page = await openPage(context, device.url);
  await check('a text model: prompt and guidance fields from the status, the request carries them', async () => {
    await page.locator('#prompt-row').waitFor({ state: 'visible', timeout: 15_000 });
    const guidance = Number(await page.locator('#guidance').inputValue());
    assert(guidance === broker.seen.status.generation.guidance_scale, `guidance ${guidance}`);
    await page.locator('#broker-state', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
    await page.locator('#prompt').fill('a lake under a blue sky');
    await page.locator('#guidance').fill('4');
    await page.getByRole('button', { name: 'Generate' }).click();
    await waitUnlessError(page, page.locator('#result-image[data-source="request"]:visible'), GENERATE_TIMEOUT_MS);
    const size = await resultSize(page);
    assert(size[0] === 16, `image ${size} from the 16px model`);
    await until(async () => broker.seen.requests.length > 0, 10_000, 'the request on P/request');
    const sent = broker.seen.requests.at(-1);
    assert(sent.prompt === 'a lake under a blue sky' && sent.guidance_scale === 4, `request ${JSON.stringify({ ...sent, frames: Object.keys(sent.frames) })}`);
    return `request with prompt and guidance 4, frames ${JSON.stringify(Object.keys(sent.frames))}, image ${size}`;
  });
  await check('no console errors on the text model page', async () => {
    assert(page.problems.length === 0, page.problems.join('; '));
  });
  await context.close();
}

async function main() {
  const started = Date.now();
  let device = null;
  try {
    await configChecks();
    device = await startDevice();
    console.log(`# page ${device.url}`);
    const config = await loadConfig(new URL(device.url), () => fetch(new URL('config.json', device.url)).then((r) => r.json()));
    const broker = await observe(config);
    const browser = await launchBrowser();
    await desktopChecks(browser, device.url, config, broker);
    await phoneChecks(browser, device.url);
    if (!process.env.TABLET_URL && !process.env.TABLET_DEMO_CMD) await textModelChecks(browser);
  } catch (error) {
    if (failed === 0) {
      failed++;
      console.log(`not ok ${passed + failed} - setup: ${error.message}`);
    }
    const output = device?.output();
    if (output) console.log(`# device output (last lines):\n${output.replace(/^/gm, '#   ')}`);
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  }
  console.log(`# ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

await main();
