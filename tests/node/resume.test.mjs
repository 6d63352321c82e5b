// The built-in page resumes its room after its connection drops: headless
// Chromium on a real roomchat, a native WebSocket client that keeps talking
// while the page is away. The page's connection is cut from the page's own
// side (its WebSocket closed, new ones refused until the test lets them
// through), so nothing but the connection restarts.
// Also: the official socket.io-client resumes by passing since + epoch in joinRoom's data.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { chromium } from 'playwright-core';
import { io } from 'socket.io-client';
import { native as nativeClient } from './native.mjs';
import { startServer, servers } from './server.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const WAIT = 10_000; // bound for any single wait
const opts = { timeout: 60_000 };

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
});
after(async () => {
  if (browser) await browser.close();
  for (const s of [...servers]) await s.stop();
});

/**
 * Runs in the page before its script: keeps every WebSocket the page opens in
 * `window.__sockets`, and refuses new ones while `window.__offline` is true
 * (the page sees "Can't reach the server" and retries, as on a dead network).
 */
function instrument() {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.__offline = false;
  window.WebSocket = class extends Native {
    constructor(...args) {
      if (window.__offline) throw new DOMException('offline (test)', 'NetworkError');
      super(...args);
      window.__sockets.push(this);
    }
  };
}

async function openPage(server) {
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(WAIT);
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.addInitScript(instrument);
  await page.goto(server.url);
  await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'online');
  return page;
}

async function join(page, username, room) {
  await page.fill('#join-username', username);
  await page.fill('#join-room', room);
  await page.click('#join-button');
  await page.waitForFunction((r) => !document.getElementById('chat-view').hidden
    && document.getElementById('room-name').textContent === r, room);
}

/** The page's chat messages, in the order shown: {seq, text}. */
function shown(page) {
  return page.$$eval('#messages .msg', (els) => els.map((e) => ({ seq: Number(e.dataset.seq), text: e.querySelector('.text').textContent })));
}

function waitMessage(page, text) {
  return page.waitForFunction((t) => [...document.querySelectorAll('#messages .msg .text')].some((e) => e.textContent === t), text);
}

function missingLines(page) {
  return page.$$eval('#messages .system', (els) => els.filter((e) => /some messages may be missing/i.test(e.textContent)).length);
}

/** Cuts the page's connection from its side and keeps it down until `reconnect`. */
async function cut(page) {
  await page.evaluate(() => { window.__offline = true; window.__sockets.at(-1).close(); });
  await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'offline');
}

/** Lets the page reconnect now (its retry button), and waits until it is back in its room. */
async function reconnect(page, room) {
  const before = await page.$$eval('#messages .system-ok', (els) => els.length);
  await page.evaluate(() => { window.__offline = false; });
  await page.click('#retry');
  await page.waitForFunction(([r, n]) => document.getElementById('conn-text').textContent === 'Connected'
    && [...document.querySelectorAll('#messages .system-ok')].length > n
    && [...document.querySelectorAll('#messages .system-ok')].at(-1).textContent.includes(`rejoined ${r}`), [room, before]);
}


test('the page resumes after its connection drops: every message once, in order, no warning', opts, async () => {
  const server = await startServer({ args: ['--rate-limit', 'off'] });
  const page = await openPage(server);
  const bob = await nativeClient(server.wsPort, WAIT);
  try {
    await join(page, 'Pat', 'resume-room');
    assert.equal((await bob.request('joinRoom', { username: 'Bob', room: 'resume-room' })).reply.event, 'ack');
    for (let i = 1; i <= 3; i++) await bob.say(`before ${i}`);
    await waitMessage(page, 'before 3');

    await cut(page);
    // The server saw the drop: Bob hears Pat leave. Then he keeps talking.
    assert.equal((await bob.until('userLeft')).username, 'Pat');
    for (let i = 1; i <= 5; i++) await bob.say(`while away ${i}`);

    await reconnect(page, 'resume-room');
    assert.equal((await bob.until('userJoined')).username, 'Pat');
    await waitMessage(page, 'while away 5');
    await bob.say('after');
    await waitMessage(page, 'after');

    const texts = [1, 2, 3].map((i) => `before ${i}`).concat([1, 2, 3, 4, 5].map((i) => `while away ${i}`), 'after');
    const got = await shown(page);
    assert.deepEqual(got.map((m) => m.text), texts, 'every message once, in order');
    assert.deepEqual(got.map((m) => m.seq), texts.map((_, i) => i + 1));
    assert.equal(await missingLines(page), 0, 'nothing was missed: no warning');

    // A second drop, right away: the page resumes from where it is now.
    await cut(page);
    await bob.until('userLeft');
    await bob.say('second gap');
    await reconnect(page, 'resume-room');
    await waitMessage(page, 'second gap');
    await bob.say('end');
    await waitMessage(page, 'end');
    const all = await shown(page);
    assert.deepEqual(all.map((m) => m.seq), all.map((_, i) => i + 1), 'still once each, in order');
    assert.equal(await missingLines(page), 0);
    assert.deepEqual(page.errors, []);
  } finally {
    bob.ws.close();
    await page.context().close();
    await server.stop();
  }
});

test('the page says some messages may be missing when more were sent than the room keeps', opts, async () => {
  const server = await startServer({ args: ['--rate-limit', 'off', '--history', '3'] });
  const page = await openPage(server);
  const bob = await nativeClient(server.wsPort, WAIT);
  try {
    await join(page, 'Pat', 'small-room');
    await bob.request('joinRoom', { username: 'Bob', room: 'small-room' });
    await bob.say('seen 1');
    await waitMessage(page, 'seen 1');

    await cut(page);
    await bob.until('userLeft');
    for (let i = 2; i <= 7; i++) await bob.say(`gone ${i}`); // seqs 2..7; the room keeps 5..7

    await reconnect(page, 'small-room');
    await page.waitForFunction(() => [...document.querySelectorAll('#messages .system')].some((e) => /some messages may be missing/i.test(e.textContent)));
    await waitMessage(page, 'gone 7');
    assert.equal(await missingLines(page), 1);
    const got = await shown(page);
    assert.deepEqual(got.map((m) => m.seq), [1, 5, 6, 7], 'what is kept, once each, in order');
    // The warning sits where the gap is: after seq 1, before seq 5.
    const order = await page.$$eval('#messages li', (els) => els.map((e) => (e.classList.contains('msg') ? `m${e.dataset.seq}` : /may be missing/i.test(e.textContent) ? 'gap' : '')).filter(Boolean));
    assert.deepEqual(order, ['m1', 'gap', 'm5', 'm6', 'm7']);

    // A clean resume afterwards adds no warning.
    await cut(page);
    await bob.until('userLeft');
    await bob.say('back in range');
    await reconnect(page, 'small-room');
    await waitMessage(page, 'back in range');
    assert.equal(await missingLines(page), 1);
    assert.deepEqual(page.errors, []);
  } finally {
    bob.ws.close();
    await page.context().close();
    await server.stop();
  }
});

test('socket.io-client resumes with since and epoch in joinRoom data', opts, async () => {
  const server = await startServer({ args: ['--rate-limit', 'off'] });
  const bob = await nativeClient(server.wsPort, WAIT);
  const connect = async () => {
    const socket = io(`http://127.0.0.1:${server.wsPort}`, { transports: ['websocket'], reconnection: false });
    await once(socket, 'connect');
    return socket;
  };
  let socket = await connect();
  try {
    const joined = new Promise((resolve) => socket.once('joined', resolve));
    const ack = await socket.timeout(WAIT).emitWithAck('joinRoom', { username: 'sio', room: 'sio-room' });
    assert.deepEqual(ack, { ok: true, room: 'sio-room' });
    const { epoch } = await joined;
    assert.equal(typeof epoch, 'string');
    await bob.request('joinRoom', { username: 'Bob', room: 'sio-room' });
    const first = new Promise((resolve) => socket.once('chatMessage', resolve));
    await bob.say('one');
    const since = (await first).seq;
    socket.disconnect();
    await bob.until('userLeft');
    await bob.say('two');
    await bob.say('three');

    socket = await connect();
    const rejoined = new Promise((resolve) => socket.once('joined', resolve));
    await socket.timeout(WAIT).emitWithAck('joinRoom', { username: 'sio', room: 'sio-room', since, epoch });
    const data = await rejoined;
    assert.equal(data.resumed, true);
    assert.deepEqual(data.history.map((m) => m.text), ['two', 'three']);
    const bad = await socket.timeout(WAIT).emitWithAck('joinRoom', { username: 'sio', room: 'sio-room', since });
    assert.equal(bad.code, 'invalid_field');
    assert.equal(bad.field, 'epoch');
  } finally {
    socket.disconnect();
    bob.ws.close();
    await server.stop();
  }
});
