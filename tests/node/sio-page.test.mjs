// An unchanged Socket.IO demo page in headless Chromium: an inline script,
// <script src="/socket.io/socket.io.js">, and `const socket = io();`, served by
// `roomchat --www DIR`. Everything must go through the HTTP port: the page, the
// client bundle, Engine.IO long-polling, then the WebSocket upgrade.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer, servers } from './server.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const WAIT = 10_000; // bound for any single wait in a page

// Written the way the Socket.IO "get started" chat page is, with roomchat's
// events: joinRoom on connect, chatMessage sent as a bare string.
const PAGE = `<!DOCTYPE html>
<html>
  <head>
    <meta charset="utf-8">
    <title>Socket.IO chat</title>
    <style>
      body { margin: 0; padding-bottom: 3rem; font-family: sans-serif; }
      #form { position: fixed; bottom: 0; left: 0; right: 0; display: flex; padding: 0.25rem; background: rgba(0, 0, 0, 0.15); }
      #input { flex-grow: 1; padding: 0 1rem; margin: 0.25rem; }
      #messages { list-style-type: none; margin: 0; padding: 0; }
      #messages > li { padding: 0.5rem 1rem; }
    </style>
  </head>
  <body>
    <ul id="messages"></ul>
    <form id="form" action="">
      <input id="input" autocomplete="off" /><button>Send</button>
    </form>
    <script src="/socket.io/socket.io.js"></script>
    <script>
      const socket = io();

      const params = new URLSearchParams(location.search);
      const form = document.getElementById('form');
      const input = document.getElementById('input');
      const messages = document.getElementById('messages');

      socket.on('connect', () => {
        socket.emit('joinRoom', { username: params.get('name'), room: params.get('room') }, (reply) => {
          document.body.dataset.joined = reply && reply.ok ? reply.room : 'refused: ' + JSON.stringify(reply);
        });
      });

      form.addEventListener('submit', (e) => {
        e.preventDefault();
        if (input.value) {
          socket.emit('chatMessage', input.value);
          input.value = '';
        }
      });

      socket.on('chatMessage', (msg) => {
        const item = document.createElement('li');
        item.textContent = msg.username + ': ' + msg.text;
        item.dataset.seq = msg.seq;
        messages.appendChild(item);
        window.scrollTo(0, document.body.scrollHeight);
      });
    </script>
  </body>
</html>
`;

let browser;
let dir;
before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'roomchat-sio-page-'));
  writeFileSync(path.join(dir, 'index.html'), PAGE);
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
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Opens the demo page in a fresh context; records its traffic and its errors. */
async function openDemo(server, name, room) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const seen = { requests: [], websockets: [], failed: [], bad: [], errors: [] };
  page.on('request', (r) => seen.requests.push(r.url()));
  page.on('requestfailed', (r) => seen.failed.push(`${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) seen.bad.push(`${r.status()} ${r.url()}`); });
  page.on('websocket', (ws) => seen.websockets.push(ws.url()));
  // The browser asks for /favicon.ico by itself; the folder has none, and its
  // 404 (the right answer) is logged as a console error: the only one allowed.
  const favicon = `http://127.0.0.1:${server.httpPort}/favicon.ico`;
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (m.location().url === favicon && /status of 404/.test(m.text())) return;
    seen.errors.push(`console: ${m.text()} at ${m.location().url}`);
  });
  page.on('pageerror', (e) => seen.errors.push(`pageerror: ${e}`));
  page.seen = seen;
  const res = await page.goto(`${server.url}?name=${encodeURIComponent(name)}&room=${encodeURIComponent(room)}`);
  assert.equal(res.status(), 200);
  assert.equal(res.headers()['content-security-policy'], undefined, 'a --www page gets no CSP: its inline script must run');
  await page.waitForFunction((r) => document.body.dataset.joined === r, room, { timeout: WAIT }).catch(async (e) => {
    e.message += `\njoined: ${await page.evaluate(() => document.body.dataset.joined)}\n${JSON.stringify(seen, null, 1)}\nserver stderr (tail):\n${server.stderr().slice(-3000)}`;
    throw e;
  });
  return page;
}

/** Types into the page's form and submits it with Enter, as a user would. */
async function say(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
}

function lines(page) {
  return page.$$eval('#messages li', (els) => els.map((e) => [Number(e.dataset.seq), e.textContent]));
}

function waitLine(page, line) {
  return page.waitForFunction((l) => [...document.querySelectorAll('#messages li')].some((e) => e.textContent === l), line, { timeout: WAIT });
}

test('an unchanged Socket.IO page (inline script, /socket.io/socket.io.js, io()) chats through the HTTP port alone', { timeout: 60_000 }, async () => {
  const server = await startServer({ www: dir, args: ['--rate-limit', 'off'] });
  const ann = await openDemo(server, 'Ann', 'demo');
  const bob = await openDemo(server, 'Bob', 'demo');
  try {
    await say(ann, 'hello from Ann');
    await waitLine(bob, 'Ann: hello from Ann');
    await say(bob, 'hi Ann, Bob here');
    await waitLine(ann, 'Bob: hi Ann, Bob here');

    // The client upgrades from long-polling to WebSocket, on the same port.
    for (const page of [ann, bob]) {
      await page.waitForFunction(() => socket.io.engine.transport.name === 'websocket', null, { timeout: WAIT });
    }
    await say(ann, 'over the websocket');
    await say(bob, 'me too');
    for (const page of [ann, bob]) {
      await waitLine(page, 'Ann: over the websocket');
      await waitLine(page, 'Bob: me too');
    }
    const a = await lines(ann);
    assert.deepEqual(a.map(([seq]) => seq), [1, 2, 3, 4], 'one seq per message, gap-free');
    assert.deepEqual(a.slice(0, 2).map(([, text]) => text), ['Ann: hello from Ann', 'Bob: hi Ann, Bob here']);
    assert.deepEqual(await lines(bob), a, 'both pages show the same messages in the same order');

    const origin = `http://127.0.0.1:${server.httpPort}`;
    for (const page of [ann, bob]) {
      const { requests, websockets, failed, bad, errors } = page.seen;
      assert.deepEqual(requests.filter((u) => new URL(u).origin !== origin), [], 'every request went to the HTTP port');
      assert.ok(requests.includes(`${origin}/socket.io/socket.io.js`), 'the client bundle came from roomchat');
      assert.ok(requests.some((u) => /^\/socket\.io\/\?EIO=4&transport=polling/.test(new URL(u).pathname + new URL(u).search)),
        `the page long-polled first: ${requests.join(' ')}`);
      assert.equal(websockets.length, 1, `one WebSocket: ${websockets.join(' ')}`);
      const ws = new URL(websockets[0]);
      assert.equal(ws.origin, `ws://127.0.0.1:${server.httpPort}`, 'the WebSocket went to the HTTP port');
      assert.equal(ws.pathname, '/socket.io/');
      assert.equal(ws.searchParams.get('transport'), 'websocket');
      assert.ok(ws.searchParams.get('sid'), 'the upgrade names its session');
      assert.deepEqual(failed, [], 'no request failed');
      assert.deepEqual(bad, [], 'no error answers');
      assert.deepEqual(errors, [], 'no console error, no page error');
      assert.equal(await page.evaluate(() => socket.connected), true);
    }
  } finally {
    await ann.context().close();
    await bob.context().close();
    await server.stop();
  }
});
