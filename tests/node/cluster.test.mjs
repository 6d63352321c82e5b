// Two browser pages on two roomchat nodes of one cluster (--redis), what
// `make cluster` shows a newcomer: one conversation across two processes.
// A private redis-server on a Unix socket in a temp folder, stopped by its
// PID. Skipped when redis-server is not installed. Leaves
// artifacts/two-nodes.png (UPDATE_SCREENSHOT=1 copies it to docs/).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { chromium } from 'playwright-core';
import { startServer, servers } from './server.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const REDIS = process.env.REDIS_SERVER || '/usr/bin/redis-server';
const ARTIFACTS = path.join(HERE, 'artifacts');
const WAIT = 10_000;
const skip = existsSync(REDIS) ? false : `no ${REDIS} (apt-get install redis-server)`;

let browser;
let redis;
let dir;
let nodes = [];

before(async () => {
  if (skip) return;
  mkdirSync(ARTIFACTS, { recursive: true });
  dir = mkdtempSync(path.join(os.tmpdir(), 'roomchat-e2e-redis-'));
  const sock = path.join(dir, 'redis.sock');
  redis = spawn(REDIS, ['--port', '0', '--unixsocket', sock, '--unixsocketperm', '700',
    '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  const args = ['--redis', `unix://${sock}`];
  nodes = [await startServer({ args }), await startServer({ args })];
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
});

after(async () => {
  if (browser) await browser.close();
  for (const s of [...servers]) await s.stop();
  if (redis && redis.exitCode === null) {
    const exited = once(redis, 'exit');
    process.kill(redis.pid, 'SIGTERM');
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function openPage(server, viewport) {
  const ctx = await browser.newContext({ viewport });
  const page = await ctx.newPage();
  page.setDefaultTimeout(WAIT);
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.goto(server.url);
  await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'online', null, { timeout: WAIT });
  return page;
}

async function join(page, username, room) {
  await page.fill('#join-username', username);
  await page.fill('#join-room', room);
  await page.click('#join-button');
  await page.waitForFunction((r) => !document.getElementById('chat-view').hidden
    && document.getElementById('room-name').textContent === r, room, { timeout: WAIT });
}

function waitMessage(page, text) {
  return page.waitForFunction((t) => [...document.querySelectorAll('#messages .msg .text')]
    .some((e) => e.textContent === t), text, { timeout: WAIT });
}

function waitUsers(page, names) {
  return page.waitForFunction((n) => JSON.stringify([...document.querySelectorAll('#user-list .name')]
    .map((e) => e.textContent).sort()) === JSON.stringify([...n].sort()), names, { timeout: WAIT });
}

test('two pages on two nodes chat in one room', { skip }, async () => {
  const size = { width: 720, height: 560 };
  const alice = await openPage(nodes[0], size);
  const bob = await openPage(nodes[1], size);
  const board = await browser.newContext({ viewport: { width: 2 * size.width + 36, height: size.height + 64 } });
  try {
    assert.notEqual(nodes[0].url, nodes[1].url, 'two nodes');
    await join(alice, 'Alice', 'general');
    await join(bob, 'Bob', 'general');
    await waitUsers(alice, ['Alice', 'Bob']);
    await waitUsers(bob, ['Alice', 'Bob']);
    const lines = [
      [alice, `Hi Bob! I am on node 1 (${new URL(nodes[0].url).port}).`],
      [bob, `And I am on node 2 (${new URL(nodes[1].url).port}): one room, one order.`],
      [alice, 'Messages go through Redis, numbered once, to both nodes.'],
    ];
    for (const [page, text] of lines) {
      await page.fill('#message-input', text);
      await page.press('#message-input', 'Enter');
      await waitMessage(alice, text);
      await waitMessage(bob, text);
    }
    // the same seq on both pages: the DOM shows the same messages in the same order
    const texts = (p) => p.$$eval('#messages .msg .text', (els) => els.map((e) => e.textContent));
    assert.deepEqual(await texts(alice), await texts(bob));
    await bob.type('#message-input', 'Nice, and typing');
    await alice.waitForFunction(() => document.getElementById('typing').textContent === 'Bob is typing…', null, { timeout: WAIT });

    const shots = [await alice.screenshot(), await bob.screenshot()].map((b) => `data:image/png;base64,${b.toString('base64')}`);
    const page = await board.newPage();
    const label = (n, s) => `node ${n}: ${new URL(s.url).host}`;
    await page.setContent(`<!doctype html><style>
      body{margin:0;display:flex;gap:12px;padding:12px;background:#d9dce6;font:14px system-ui,sans-serif}
      figure{margin:0} figcaption{padding:0 0 8px 4px;color:#333}
      img{display:block;border-radius:10px;box-shadow:0 4px 18px rgb(0 0 0/18%)}
      </style><figure><figcaption>${label(1, nodes[0])}</figcaption><img alt="Alice" src="${shots[0]}"></figure>
      <figure><figcaption>${label(2, nodes[1])}</figcaption><img alt="Bob" src="${shots[1]}"></figure>`);
    await page.waitForFunction(() => [...document.images].every((i) => i.complete && i.naturalWidth > 0), null, { timeout: WAIT });
    await page.screenshot({ path: path.join(ARTIFACTS, 'two-nodes.png') });
    for (const p of [alice, bob]) assert.deepEqual(p.errors, [], 'no JavaScript errors in the page');
  } finally {
    await board.close();
    await alice.context().close();
    await bob.context().close();
  }
});
