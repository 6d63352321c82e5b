// Browser end-to-end tests: headless Chromium (Debian's package) driven by
// playwright-core, against a real roomchat process on loopback.
// Run with ./run-e2e.sh (or `node --test e2e.test.mjs`); the server binary comes
// from ROOMCHAT_BIN (default ../../target/debug/roomchat).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer, restartServer, servers } from './server.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.join(HERE, 'artifacts');
const WAIT = 10_000; // bound for any single wait in a page
const TEST_TIMEOUT = 60_000;

const XSS = '<img src=x onerror=alert(1)>';
const XSS_ROOM = '<svg onload=alert(3)>';

// ---- the server under test

/** The server side of the HTTP port's connections (Recv-Q > 0: request bytes nobody reads). */
function sockets(port) {
  try {
    return execFileSync('ss', ['-tn', 'state', 'established', `( sport = :${port} )`], { encoding: 'utf8', timeout: 2000 });
  } catch (e) {
    return `(ss not available: ${e.message})`;
  }
}

// ---- the browser

let browser;
let shared; // one server for the tests that need no special flags

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // launch() gives every run a fresh temporary profile (user-data-dir).
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
  shared = await startServer();
});

after(async () => {
  if (browser) await browser.close();
  for (const s of [...servers]) await s.stop();
});

/** Opens the client in a fresh context (own localStorage); records dialogs and page errors. */
async function openPage(server, { viewport = { width: 1100, height: 760 }, context } = {}) {
  const ctx = context || await browser.newContext({ viewport });
  const page = await ctx.newPage();
  page.setDefaultTimeout(WAIT);
  page.dialogs = [];
  page.errors = [];
  page.on('dialog', (d) => { page.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => page.errors.push(String(e)));
  // Kept so that a stalled load says which request hung.
  const t0 = Date.now();
  const netlog = [];
  page.on('request', (r) => netlog.push(`${Date.now() - t0} ms request ${r.url()}`));
  page.on('requestfinished', (r) => netlog.push(`${Date.now() - t0} ms finished ${r.url()}`));
  page.on('requestfailed', (r) => netlog.push(`${Date.now() - t0} ms failed ${r.url()} ${r.failure()?.errorText}`));
  page.on('websocket', (ws) => {
    netlog.push(`${Date.now() - t0} ms websocket ${ws.url()}`);
    ws.on('close', () => netlog.push(`${Date.now() - t0} ms websocket closed`));
  });
  try {
    await page.goto(server.url);
    await waitConn(page, 'online');
  } catch (e) {
    e.message += `\nnetwork log:\n  ${netlog.join('\n  ')}\nserver sockets:\n${sockets(server.httpPort)}\nserver stderr (tail):\n${server.stderr().slice(-3000)}`;
    throw e;
  }
  return page;
}

async function closeAll(...pages) {
  for (const p of pages) {
    assert.deepEqual(p.errors, [], 'no JavaScript errors in the page');
    await p.context().close();
  }
}

function waitConn(page, state) {
  return page.waitForFunction((s) => document.getElementById('conn').dataset.state === s, state, { timeout: WAIT });
}

async function join(page, username, room) {
  await page.fill('#join-username', username);
  await page.fill('#join-room', room);
  await page.click('#join-button');
  await page.waitForFunction((r) => !document.getElementById('chat-view').hidden
    && document.getElementById('room-name').textContent === r, room, { timeout: WAIT });
}

/** Types into the composer and presses Enter, as a user would. */
async function say(page, text) {
  await page.fill('#message-input', text);
  await page.press('#message-input', 'Enter');
}

function waitMessage(page, text) {
  return page.waitForFunction((t) => [...document.querySelectorAll('#messages .msg .text')].some((e) => e.textContent === t), text, { timeout: WAIT });
}

function waitSystem(page, text) {
  return page.waitForFunction((t) => [...document.querySelectorAll('#messages .system')].some((e) => e.textContent.includes(t)), text, { timeout: WAIT });
}

function waitUsers(page, names) {
  return page.waitForFunction((n) => JSON.stringify([...document.querySelectorAll('#user-list .name')].map((e) => e.textContent).sort()) === JSON.stringify([...n].sort()), names, { timeout: WAIT });
}

function messages(page) {
  return page.$$eval('#messages .msg', (els) => els.map((e) => ({
    sender: e.querySelector('.sender').textContent,
    text: e.querySelector('.text').textContent,
    own: e.classList.contains('own'),
    time: e.querySelector('time').textContent,
  })));
}

const opts = { timeout: TEST_TIMEOUT };

// ---- tests

test('two pages in one room chat both ways; a page in another room sees none of it', opts, async () => {
  const alice = await openPage(shared);
  const bob = await openPage(shared);
  const carol = await openPage(shared);
  try {
    await join(alice, 'Alice', 'lobby');
    assert.equal(await alice.evaluate(() => document.activeElement.id), 'message-input', 'focus moves to the composer after joining');
    await join(bob, 'Bob', 'lobby');
    await join(carol, 'Carol', 'elsewhere');

    await waitSystem(alice, 'Bob joined.');
    await waitUsers(alice, ['Alice', 'Bob']);
    await waitUsers(bob, ['Alice', 'Bob']);
    assert.equal(await alice.textContent('#user-count'), '2');

    await say(alice, 'Hello Bob');
    await waitMessage(bob, 'Hello Bob');
    await bob.fill('#message-input', 'Hi Alice, got it');
    await bob.click('#send-button');
    await waitMessage(alice, 'Hi Alice, got it');
    await waitMessage(bob, 'Hi Alice, got it');
    assert.equal(await alice.inputValue('#message-input'), '', 'the composer is emptied after sending');

    const a = await messages(alice);
    assert.deepEqual(a.map((m) => [m.sender, m.text, m.own]), [
      ['Alice (you)', 'Hello Bob', true],
      ['Bob', 'Hi Alice, got it', false],
    ]);
    const b = await messages(bob);
    assert.deepEqual(b.map((m) => [m.sender, m.text, m.own]), [
      ['Alice', 'Hello Bob', false],
      ['Bob (you)', 'Hi Alice, got it', true],
    ]);
    for (const m of [...a, ...b]) assert.match(m.time, /\d{1,2}.\d{2}/, 'local time shown');

    await say(carol, 'Carol alone');
    await waitMessage(carol, 'Carol alone');
    await waitUsers(carol, ['Carol']);
    const c = await messages(carol);
    assert.deepEqual(c.map((m) => m.text), ['Carol alone'], 'the other room sees none of the lobby');
    assert.ok(!(await carol.textContent('#messages')).includes('Bob'), 'no presence lines from the other room');
    assert.ok(!(await messages(alice)).some((m) => m.text === 'Carol alone'));
    assert.ok(!(await messages(bob)).some((m) => m.text === 'Carol alone'));

    await bob.click('#leave-button');
    await bob.waitForSelector('#join-view', { state: 'visible' });
    await waitSystem(alice, 'Bob left.');
    await waitUsers(alice, ['Alice']);
    assert.equal(await alice.textContent('#user-count'), '1');
  } finally {
    await closeAll(alice, bob, carol);
  }
});

test('typing indicator appears for others, clears after a pause and on send', opts, async () => {
  const alice = await openPage(shared);
  const bob = await openPage(shared);
  try {
    await join(alice, 'Alice', 'typing-room');
    await join(bob, 'Bob', 'typing-room');
    await waitUsers(alice, ['Alice', 'Bob']);

    await alice.type('#message-input', 'Hel');
    await bob.waitForFunction(() => document.getElementById('typing').textContent === 'Alice is typing…', null, { timeout: WAIT });
    assert.equal(await alice.textContent('#typing'), '', 'no indicator for oneself');
    // Alice pauses: about 2 s later the indicator goes away.
    const t0 = Date.now();
    await bob.waitForFunction(() => document.getElementById('typing').textContent === '', null, { timeout: WAIT });
    const paused = Date.now() - t0;
    assert.ok(paused >= 1000 && paused < 5000, `cleared after a pause (${paused} ms)`);

    await alice.type('#message-input', 'lo');
    await bob.waitForFunction(() => document.getElementById('typing').textContent === 'Alice is typing…', null, { timeout: WAIT });
    await alice.press('#message-input', 'Enter');
    await waitMessage(bob, 'Hello');
    assert.equal(await bob.textContent('#typing'), '', 'cleared when the message arrives');

    // Two people typing at once.
    const carol = await openPage(shared);
    try {
      await join(carol, 'Carol', 'typing-room');
      await alice.type('#message-input', 'a');
      await carol.type('#message-input', 'b');
      await bob.waitForFunction(() => /^(Alice and Carol|Carol and Alice) are typing…$/.test(document.getElementById('typing').textContent), null, { timeout: WAIT });
    } finally {
      await closeAll(carol);
    }
    // Carol's page closed: her flag goes with userLeft.
    await bob.waitForFunction(() => document.getElementById('typing').textContent === 'Alice is typing…', null, { timeout: WAIT });
  } finally {
    await closeAll(alice, bob);
  }
});

test('markup in names, rooms and messages renders as text, never as HTML', opts, async () => {
  const mallory = await openPage(shared);
  const bob = await openPage(shared);
  const script = '<script>alert(2)</script><b>bold?</b> & "quotes"';
  try {
    await join(bob, 'Bob', XSS_ROOM);
    await join(mallory, XSS, XSS_ROOM);
    await waitSystem(bob, `${XSS} joined.`);
    await say(mallory, XSS);
    await say(mallory, script);
    await waitMessage(bob, XSS);
    await waitMessage(bob, script);
    await mallory.type('#message-input', 'x');
    await bob.waitForFunction((n) => document.getElementById('typing').textContent === `${n} is typing…`, XSS, { timeout: WAIT });

    for (const page of [bob, mallory]) {
      assert.equal(await page.textContent('#room-name'), XSS_ROOM);
      const msgs = await messages(page);
      assert.deepEqual(msgs.map((m) => m.text), [XSS, script]);
      assert.ok(msgs.every((m) => m.sender.startsWith(XSS)));
      const names = await page.$$eval('#user-list .name', (els) => els.map((e) => e.textContent));
      assert.ok(names.includes(XSS));
      const injected = await page.evaluate(() => document.querySelectorAll('#chat-view img, #chat-view svg, #chat-view script, #chat-view b').length);
      assert.equal(injected, 0, 'no element was created from user text');
      assert.equal(await page.evaluate(() => document.querySelectorAll('img').length), 1, 'only the logo image exists');
      assert.deepEqual(page.dialogs, [], 'no alert() ran');
    }
    assert.equal(await bob.title(), `${XSS_ROOM} · roomchat`);
  } finally {
    await closeAll(mallory, bob);
  }
});

test('history on join, Enter sends and Shift+Enter adds a line, last values remembered', opts, async () => {
  const alice = await openPage(shared);
  const ctxB = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  let bob = await openPage(shared, { context: ctxB });
  try {
    await join(alice, 'Alice', 'history-room');
    await alice.type('#message-input', 'line one');
    await alice.keyboard.press('Shift+Enter');
    await alice.keyboard.type('line two');
    assert.equal(await alice.inputValue('#message-input'), 'line one\nline two', 'Shift+Enter adds a new line');
    await alice.keyboard.press('Enter');
    await waitMessage(alice, 'line one\nline two');
    await say(alice, 'second');
    await waitMessage(alice, 'second');

    // The join form starts empty in a fresh browser profile.
    assert.equal(await bob.inputValue('#join-username'), '');
    await join(bob, '  Bob  ', 'history-room');
    await waitSystem(bob, '2 earlier messages');
    const hist = await bob.$$eval('#messages .msg.history .text', (els) => els.map((e) => e.textContent));
    assert.deepEqual(hist, ['line one\nline two', 'second'], 'history shown on join, oldest first');
    assert.equal(await bob.textContent('#me-name'), 'Bob', 'the trimmed name is used');

    // A reload (same profile) comes back to a join form holding the last values.
    await bob.reload();
    await waitConn(bob, 'online');
    assert.equal(await bob.inputValue('#join-username'), 'Bob');
    assert.equal(await bob.inputValue('#join-room'), 'history-room');
    // Active rooms (from /api/rooms) are offered as one-click choices.
    await bob.locator('#active-rooms-list .chip-name', { hasText: 'history-room' }).first().waitFor();
    await bob.fill('#join-room', '');
    await bob.locator('#active-rooms-list .chip', { hasText: 'history-room' }).first().click();
    assert.equal(await bob.inputValue('#join-room'), 'history-room');
    await bob.click('#join-button');
    await bob.waitForSelector('#chat-view', { state: 'visible' });
  } finally {
    await closeAll(alice, bob);
  }
});

test('switching rooms without a reload, then leaving', opts, async () => {
  const alice = await openPage(shared);
  const bob = await openPage(shared);
  try {
    await join(alice, 'Alice', 'room-a');
    await join(bob, 'Bob', 'room-a');
    await say(bob, 'in room a');
    await waitMessage(alice, 'in room a');
    await alice.evaluate(() => { window.noReloadMarker = 42; });

    await alice.fill('#switch-room', 'room-a');
    await alice.click('#switch-form button[type=submit]');
    await alice.waitForFunction(() => document.getElementById('switch-room-error').textContent.includes('already in'), null, { timeout: WAIT });

    await alice.fill('#switch-room', 'room-b');
    await alice.press('#switch-room', 'Enter');
    await alice.waitForFunction(() => document.getElementById('room-name').textContent === 'room-b', null, { timeout: WAIT });
    await waitSystem(alice, 'You switched to room-b.');
    await waitSystem(bob, 'Alice left.');
    await waitUsers(bob, ['Bob']);
    await waitUsers(alice, ['Alice']);
    assert.equal(await alice.evaluate(() => window.noReloadMarker), 42, 'the page was not reloaded');
    assert.deepEqual(await messages(alice), [], 'the old room\'s messages are gone');

    await say(bob, 'still in room a');
    await waitMessage(bob, 'still in room a');
    await say(alice, 'hello room b');
    await waitMessage(alice, 'hello room b');
    assert.ok(!(await messages(alice)).some((m) => m.text === 'still in room a'));

    await alice.click('#leave-button');
    await alice.waitForSelector('#join-view', { state: 'visible' });
    assert.equal(await alice.inputValue('#join-room'), 'room-b');
    assert.equal(await alice.evaluate(() => document.activeElement.id), 'join-room', 'focus goes to the room field after leaving');
    assert.equal(await alice.evaluate(() => window.noReloadMarker), 42);
  } finally {
    await closeAll(alice, bob);
  }
});

test('invalid input is explained before sending, mirroring the server bounds', opts, async () => {
  const page = await openPage(shared);
  try {
    const errorOf = (id) => page.textContent(`#${id}-error`);
    await page.fill('#join-username', '   ');
    await page.fill('#join-room', 'ok');
    await page.click('#join-button');
    assert.match(await errorOf('join-username'), /Enter a name/);
    assert.equal(await page.evaluate(() => document.activeElement.id), 'join-username');

    await page.fill('#join-username', 'x'.repeat(33));
    await page.click('#join-button');
    assert.match(await errorOf('join-username'), /33 characters.*at most 32/);

    // 32 astral characters are 64 UTF-16 units but 32 scalar values: allowed.
    await page.fill('#join-username', '😀'.repeat(32));
    await page.fill('#join-room', 'r'.repeat(65));
    await page.click('#join-button');
    assert.equal(await errorOf('join-username'), '');
    assert.match(await errorOf('join-room'), /65 characters.*at most 64/);

    await page.fill('#join-room', 'bad\u0007room');
    await page.click('#join-button');
    assert.match(await errorOf('join-room'), /control characters/);

    await page.fill('#join-room', 'validation');
    await page.click('#join-button');
    await page.waitForSelector('#chat-view', { state: 'visible' });
    assert.equal(await page.textContent('#me-name'), '😀'.repeat(32));

    await page.fill('#message-input', ' \n\t ');
    await page.press('#message-input', 'Enter');
    assert.match(await page.textContent('#message-error'), /cannot be empty/);
    await page.fill('#message-input', 'y'.repeat(2001));
    await page.press('#message-input', 'Enter');
    assert.match(await page.textContent('#message-error'), /2001 characters.*at most 2000/);
    assert.equal((await page.inputValue('#message-input')).length, 2001, 'the text is kept for editing');
    await page.fill('#message-input', 'y'.repeat(2000));
    await page.press('#message-input', 'Enter');
    await waitMessage(page, 'y'.repeat(2000));
  } finally {
    await closeAll(page);
  }
});

test('server errors are shown in words (rate limit)', opts, async () => {
  const server = await startServer({ args: ['--rate-limit', '1'] });
  const page = await openPage(server);
  try {
    await join(page, 'Speedy', 'limits');
    // A bucket of 2 tokens refilled at 1/s: a quick burst must be refused.
    for (let i = 1; i <= 5; i++) await say(page, `burst ${i}`);
    await page.waitForFunction(() => /too fast/.test(document.getElementById('message-error').textContent + document.getElementById('banner-text').textContent), null, { timeout: WAIT });
    const shown = (await page.textContent('#message-error')) + (await page.textContent('#banner-text'));
    assert.match(shown, /too fast/);
    if ((await page.textContent('#message-error')).includes('too fast')) {
      assert.match(await page.inputValue('#message-input'), /^burst \d$/, 'the refused text is given back');
    }
  } finally {
    await closeAll(page);
    await server.stop();
  }
});

test('after a server restart on the same ports the pages reconnect, rejoin and keep chatting', opts, async () => {
  let server = await startServer();
  const alice = await openPage(server);
  const bob = await openPage(server);
  try {
    await join(alice, 'Alice', 'restart-room');
    await join(bob, 'Bob', 'restart-room');
    await say(alice, 'before restart');
    await waitMessage(bob, 'before restart');

    const stopped = await server.stop();
    for (const p of [alice, bob]) {
      await waitConn(p, 'offline');
      await p.waitForFunction(() => /Reconnecting in \d+ s/.test(document.getElementById('conn-text').textContent), null, { timeout: WAIT });
      // The server's Close 1001 on SIGTERM reaches the page and is put in words.
      await waitSystem(p, 'The server went away (restarting?). Trying to reconnect…');
    }
    assert.equal(await alice.isDisabled('#send-button'), true, 'sending is off while offline');

    // Stay down long enough for at least one failed retry (the first comes after ~0.5 s).
    await new Promise((r) => setTimeout(r, 1500));
    server = await restartServer(server);
    for (const p of [alice, bob]) {
      await p.waitForFunction(() => document.getElementById('conn-text').textContent === 'Connected', null, { timeout: 20_000 });
      await waitSystem(p, 'Reconnected: rejoined restart-room');
      // The restarted server's room is another epoch: the page cannot resume it, and says so.
      await waitSystem(p, 'Some messages may be missing');
      await waitUsers(p, ['Alice', 'Bob']);
      assert.equal(await p.$$eval('#messages .system-warn', (els) => els.length), 1, 'one line per drop, not per retry');
    }
    assert.ok((await messages(bob)).some((m) => m.text === 'before restart'), 'earlier messages stay on screen');

    await say(alice, 'after restart');
    await waitMessage(bob, 'after restart');
    await say(bob, 'welcome back');
    await waitMessage(alice, 'welcome back');
    assert.equal(stopped.code, 0, `server exited cleanly on SIGTERM: ${JSON.stringify(stopped)}`);
  } finally {
    await closeAll(alice, bob);
    await server.stop();
  }
});

test('auto-scroll follows the conversation but does not yank a reader who scrolled up', opts, async () => {
  const alice = await openPage(shared, { viewport: { width: 900, height: 600 } });
  const bob = await openPage(shared);
  try {
    await join(alice, 'Alice', 'scroll-room');
    await join(bob, 'Bob', 'scroll-room');
    const tall = (n) => Array.from({ length: 25 }, (_, i) => `message ${n}, line ${i + 1}`).join('\n');
    for (let n = 1; n <= 3; n++) {
      await say(bob, tall(n));
      await waitMessage(alice, tall(n));
    }
    const atBottom = () => alice.evaluate(() => { const m = document.getElementById('messages'); return m.scrollHeight - m.scrollTop - m.clientHeight < 48; });
    assert.ok(await atBottom(), 'follows new messages while at the bottom');

    await alice.evaluate(() => { document.getElementById('messages').scrollTop = 0; });
    await say(bob, 'while you were reading');
    await waitMessage(alice, 'while you were reading');
    assert.equal(await alice.evaluate(() => document.getElementById('messages').scrollTop), 0, 'the reader stays where they were');
    await alice.waitForSelector('#jump', { state: 'visible' });

    await alice.click('#jump');
    assert.ok(await atBottom());
    await say(bob, 'now at the bottom');
    await waitMessage(alice, 'now at the bottom');
    assert.ok(await atBottom());
  } finally {
    await closeAll(alice, bob);
  }
});

test('layout works at phone width and desktop width', opts, async () => {
  const phone = await openPage(shared, { viewport: { width: 375, height: 720 } });
  const desk = await openPage(shared, { viewport: { width: 1280, height: 800 } });
  try {
    const noSideScroll = (p) => p.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
    assert.ok(await noSideScroll(phone), 'join screen fits a phone');
    await join(phone, 'Pat on a phone with a long name', 'layout');
    await join(desk, 'Dana', 'layout');
    await say(desk, 'x'.repeat(300));
    await say(desk, 'A normal sentence that wraps across a couple of lines on a narrow phone screen.');
    await waitMessage(phone, 'x'.repeat(300));
    assert.ok(await noSideScroll(phone), 'long words wrap instead of widening the page');

    const box = (p, sel) => p.locator(sel).boundingBox();
    const vp = { width: 375, height: 720 };
    const composer = await box(phone, '#composer');
    const list = await box(phone, '#messages');
    const side = await box(phone, '#sidebar');
    assert.ok(composer.y + composer.height <= vp.height + 1 && composer.x >= 0 && composer.x + composer.width <= vp.width + 1, 'composer fully on screen');
    assert.ok(list.height >= 250, `message list has room (${list.height}px)`);
    assert.ok(side.y < list.y, 'room header stacks above the messages on a phone');
    assert.equal(await phone.evaluate(() => document.getElementById('people').open), false, 'people list folded on a phone');
    await phone.click('#people summary');
    await waitUsers(phone, ['Pat on a phone with a long name', 'Dana']);
    await phone.click('#people summary');
    await phone.screenshot({ path: path.join(ARTIFACTS, 'phone.png') });

    const dside = await box(desk, '#sidebar');
    const dlist = await box(desk, '#messages');
    assert.ok(dside.x + dside.width <= dlist.x + 1 && Math.abs(dside.y - dlist.y) < 40, 'sidebar beside the messages on a desktop');
    assert.ok(await desk.isVisible('#user-list'));
    assert.ok(await desk.isVisible('#conn'), 'connection state visible');
    assert.ok(await phone.isVisible('#conn'), 'connection state visible on a phone');
  } finally {
    await closeAll(phone, desk);
  }
});

test('screenshot: two people chatting side by side', opts, async () => {
  // The server forbids framing (CSP frame-ancestors 'none'), so shoot two real
  // pages and lay the two shots side by side in a blank page.
  const size = { width: 760, height: 800 };
  const alice = await openPage(shared, { viewport: size });
  const bob = await openPage(shared, { viewport: size });
  const board = await browser.newContext({ viewport: { width: 2 * size.width + 36, height: size.height + 24 } });
  try {
    await join(alice, 'Alice', 'general');
    await join(bob, 'Bob', 'general');
    await waitUsers(alice, ['Alice', 'Bob']);
    const lines = [
      [alice, 'Hi Bob! Did the deploy go out?'],
      [bob, 'Yes, 10 minutes ago. Metrics look calm.'],
      [bob, 'Reconnects are handled too: restart the server and watch.'],
      [alice, 'Nice. And <b>markup</b> stays text, as it should.'],
    ];
    for (const [page, text] of lines) {
      await say(page, text);
      await waitMessage(alice, text);
      await waitMessage(bob, text);
    }
    await bob.type('#message-input', 'Let me check the');
    await alice.waitForFunction(() => document.getElementById('typing').textContent === 'Bob is typing…', null, { timeout: WAIT });
    const shots = [await alice.screenshot(), await bob.screenshot()].map((b) => `data:image/png;base64,${b.toString('base64')}`);
    const page = await board.newPage();
    await page.setContent(`<!doctype html><style>
      body{margin:0;display:flex;gap:12px;padding:12px;background:#d9dce6}
      img{display:block;border-radius:10px;box-shadow:0 4px 18px rgb(0 0 0/18%)}
      </style><img alt="Alice" src="${shots[0]}"><img alt="Bob" src="${shots[1]}">`);
    await page.waitForFunction(() => [...document.images].every((i) => i.complete && i.naturalWidth > 0), null, { timeout: WAIT });
    await page.screenshot({ path: path.join(ARTIFACTS, 'two-pages.png') });
  } finally {
    await board.close();
    await closeAll(alice, bob);
  }
});
