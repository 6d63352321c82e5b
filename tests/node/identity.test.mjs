// Identity (v3) from the outside: the official socket.io-client with
// `auth: {token}` (both transports, connect_error and a retry on the same
// session), and the built-in page in Chromium with a token in its URL
// fragment (signed in before anything, the verified name shown, no name
// field; no token, and an expiry, said clearly and without a reconnect loop).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { chromium } from 'playwright-core';
import { io } from 'socket.io-client';
import { startServer, servers } from './server.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const WAIT = 10_000; // bound for any single wait
const SECRET = 'node-test-secret-of-at-least-32-bytes!';

/** An HS256 JWT for `claims`, signed with the test secret. */
function sign(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}
const now = () => Math.floor(Date.now() / 1000);
const token = (sub, extra = {}) => sign({ sub, exp: now() + 3600, ...extra });

let server;
let browser;
before(async () => {
  server = await startServer({ args: ['--auth-hmac-secret', SECRET, '--auth-leeway', '0', '--rate-limit', 'off'] });
});
after(async () => {
  if (browser) await browser.close();
  for (const s of [...servers]) await s.stop();
});

/** Resolves with the first `event` on `emitter`, or fails after WAIT. */
function next(emitter, event, ms = WAIT) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { emitter.off(event, on); reject(new Error(`no ${event} within ${ms} ms`)); }, ms);
    const on = (...args) => { clearTimeout(timer); resolve(args.length > 1 ? args : args[0]); };
    emitter.once(event, on);
  });
}

for (const [label, port, transports] of [
  ['WebSocket on the WebSocket port', 'wsPort', ['websocket']],
  ['long-polling then WebSocket on the HTTP port', 'httpPort', undefined],
]) {
  test(`socket.io-client authenticates with auth: {token} (${label})`, async () => {
    const url = `http://127.0.0.1:${server[port]}`;
    const opts = { reconnection: false, ...(transports ? { transports } : {}) };
    const socket = io(url, { ...opts, auth: { token: 'not.a.token' } });
    try {
      const refused = await next(socket, 'connect_error');
      assert.match(refused.message, /^invalid_token: /);
      // The same session, a better token.
      socket.auth = { token: token('u-sio', { name: 'Sio' }) };
      const connected = next(socket, 'connected');
      socket.connect();
      await next(socket, 'connect');
      const hello = await connected;
      assert.equal(hello.auth, 'required');
      assert.equal(hello.user, 'u-sio');
      const joinedP = next(socket, 'joined');
      const ack = await socket.timeout(WAIT).emitWithAck('joinRoom', { room: 'sio-room' });
      assert.deepEqual(ack, { ok: true, room: 'sio-room' });
      const joined = await joinedP;
      assert.equal(joined.username, 'Sio');
      assert.equal(joined.users.find((u) => u.id === hello.id).user, 'u-sio');
      const refusal = await socket.timeout(WAIT).emitWithAck('joinRoom', { room: '$private' });
      assert.equal(refusal.code, 'forbidden');
      // A refresh with the event, once connected.
      const refreshed = await socket.timeout(WAIT).emitWithAck('authenticate', { token: token('u-sio') });
      assert.equal(refreshed.user, 'u-sio');
    } finally {
      socket.close();
    }
  });
}

test('socket.io-client without a token gets connect_error unauthenticated', async () => {
  const socket = io(`http://127.0.0.1:${server.wsPort}`, { transports: ['websocket'], reconnection: false });
  try {
    const refused = await next(socket, 'connect_error');
    assert.match(refused.message, /^unauthenticated: /);
  } finally {
    socket.close();
  }
});

// ---- the built-in page

async function openPage(fragment) {
  if (!browser) {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
      timeout: 30_000,
    });
  }
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(WAIT);
  page.errors = [];
  page.sockets = 0;
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('websocket', () => { page.sockets += 1; });
  await page.goto(`${server.url}${fragment}`);
  return page;
}

const text = (page, id) => page.evaluate((i) => document.getElementById(i).textContent, id);
const hidden = (page, selector) => page.evaluate((s) => document.querySelector(s).closest('[hidden]') !== null, selector);

test('the page signs in with the token in its fragment and shows the verified name', async () => {
  const ann = await openPage(`#token=${token('u-ann', { name: 'Ann' })}`);
  const bob = await openPage(`#token=${token('u-bob', { name: 'Bob' })}`);
  try {
    for (const [page, name] of [[ann, 'Ann'], [bob, 'Bob']]) {
      await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'online');
      await page.waitForFunction((n) => document.getElementById('join-identity-name').textContent === n, name);
      assert.equal(await hidden(page, '#join-username'), true, 'no name field');
      await page.fill('#join-room', 'verified');
      await page.click('#join-button');
      await page.waitForFunction(() => !document.getElementById('chat-view').hidden);
      assert.equal(await text(page, 'me-name'), name);
      assert.equal(await hidden(page, '#me-verified'), false);
    }
    await ann.fill('#message-input', 'hello from a verified Ann');
    await ann.press('#message-input', 'Enter');
    const sender = await bob.waitForFunction(() => {
      const m = [...document.querySelectorAll('#messages .msg')].find((e) => e.querySelector('.text').textContent === 'hello from a verified Ann');
      return m && m.querySelector('.sender').title;
    });
    assert.equal(await sender.jsonValue(), 'Verified user u-ann');
    assert.deepEqual([...ann.errors, ...bob.errors], []);
  } finally {
    await ann.context().close();
    await bob.context().close();
  }
});

test('without a token the page says the server needs a sign-in, and stops', async () => {
  const page = await openPage('');
  try {
    await page.waitForFunction(() => !document.getElementById('banner').hidden);
    assert.match(await text(page, 'banner-text'), /needs you to sign in/);
    assert.equal(await page.evaluate(() => document.getElementById('join-button').disabled), true);
    assert.equal(await hidden(page, '#join-identity'), true, 'nobody is signed in');
    // No reconnect loop: past the server's own deadline, still one socket.
    await page.waitForTimeout(1500); // time passing, not a sync point
    assert.equal(page.sockets, 1);
    assert.deepEqual(page.errors, []);
  } finally {
    await page.context().close();
  }
});

test('an expired sign-in is said clearly, without a reconnect loop', async () => {
  const short = sign({ sub: 'u-short', name: 'Shorty', exp: now() + 3 });
  const page = await openPage(`#token=${short}`);
  try {
    await page.waitForFunction(() => document.getElementById('join-identity-name').textContent === 'Shorty');
    await page.fill('#join-room', 'short-lived');
    await page.click('#join-button');
    await page.waitForFunction(() => !document.getElementById('chat-view').hidden);
    await page.waitForFunction(() => /expired/.test(document.getElementById('banner-text').textContent), null, { timeout: 8_000 });
    await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'offline');
    assert.match(await text(page, 'conn-text'), /Not signed in/);
    await page.waitForTimeout(1500); // time passing: a loop would open sockets
    assert.equal(page.sockets, 1, 'no reconnect with the same expired token');
    // A fresh token in the fragment starts again.
    await page.evaluate((t) => { location.hash = `token=${t}`; }, token('u-short', { name: 'Shorty' }));
    await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'online');
    assert.deepEqual(page.errors, []);
  } finally {
    await page.context().close();
  }
});
