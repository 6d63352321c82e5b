// The official socket.io-client (v4) with its DEFAULT options against the HTTP
// port ("one port", protocol v2): Engine.IO long-polling first, then the
// upgrade to WebSocket on the same port, side by side with native clients.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import { startServer } from './server.mjs';

const WAIT = 5_000; // bound for any single wait
const started = [];
const sockets = [];
after(async () => {
  for (const socket of sockets) socket.disconnect();
  for (const s of started) await s.stop();
});

async function server(args = []) {
  const s = await startServer({ args: ['--rate-limit', 'off', ...args] });
  started.push(s);
  return s;
}

/** Resolves with the first `event` on `emitter`, or fails after `ms`. */
function next(emitter, event, ms = WAIT) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { emitter.off(event, on); reject(new Error(`no ${event} within ${ms} ms`)); }, ms);
    const on = (...args) => { clearTimeout(timer); resolve(args.length > 1 ? args : args[0]); };
    emitter.once(event, on);
  });
}

/** Fails after `ms` unless `promise` settles first. */
function within(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms); });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * `io("http://127.0.0.1:<http port>")` exactly as a page would call it (no
 * transports option: polling first, then the upgrade), except that it does not
 * reconnect: a drop must show. Records the transport of every moment that matters.
 */
function sio(s, opts = {}) {
  const socket = io(`http://127.0.0.1:${s.httpPort}`, { reconnection: false, ...opts });
  sockets.push(socket);
  const engine = socket.io.engine; // created synchronously by io(): autoConnect
  assert.ok(engine, 'the Manager opened its Engine.IO socket at once');
  socket.transports = { atOpen: null };
  engine.once('open', () => { socket.transports.atOpen = engine.transport.name; });
  // No timer here (a polling-only client never upgrades): the tests bound the wait.
  socket.upgraded = new Promise((resolve) => engine.once('upgrade', (t) => resolve(t.name)));
  return socket;
}

/** A native client (roomchat's own frames) on `port` at `path`; every frame kept. */
async function native(port, path = '/ws') {
  const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`);
  const frames = [];
  const pending = new Map(); // ack id -> resolve
  const watchers = new Set();
  let lastAck = 0;
  ws.on('message', (data) => {
    const frame = JSON.parse(data.toString());
    frames.push(frame);
    if (frame.ack !== undefined && pending.has(frame.ack)) {
      pending.get(frame.ack)(frame);
      pending.delete(frame.ack);
    }
    for (const w of watchers) w(frame);
  });
  await within(once(ws, 'open'), WAIT, `native client on :${port}${path} open`);
  const client = {
    ws,
    frames,
    /** Sends `event` with an ack; resolves with the reply frame (`ack` or `error`). */
    request(event, data) {
      const ack = ++lastAck;
      const reply = new Promise((resolve) => pending.set(ack, resolve));
      ws.send(JSON.stringify(data === undefined ? { event, ack } : { event, data, ack }));
      return within(reply, WAIT, `native ${event} ack ${ack}`);
    },
    /** The first frame, already received or to come, for which `pred` holds. */
    waitFor(pred, what, ms = WAIT) {
      const seen = frames.find(pred);
      if (seen) return Promise.resolve(seen);
      let watcher;
      const found = new Promise((resolve) => {
        watcher = (f) => { if (pred(f)) resolve(f); };
        watchers.add(watcher);
      });
      return within(found, ms, `native client: ${what}`).finally(() => watchers.delete(watcher));
    },
    chats() { return frames.filter((f) => f.event === 'chatMessage').map((f) => f.data); },
    close() { ws.close(); },
  };
  const first = await client.waitFor(() => true, 'connected');
  assert.equal(first.event, 'connected', JSON.stringify(first));
  client.id = first.data.id;
  return client;
}

async function nativeJoin(port, username, room, path = '/ws') {
  const c = await native(port, path);
  const reply = await c.request('joinRoom', { username, room });
  assert.deepEqual(reply.data, { ok: true, room }, JSON.stringify(reply));
  return c;
}

/** An Engine.IO GET with `sid` on the HTTP port, as a raw request. */
async function rawPoll(s, sid) {
  const res = await fetch(`http://127.0.0.1:${s.httpPort}/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`,
    { signal: AbortSignal.timeout(WAIT) });
  return { status: res.status, body: await res.text() };
}

/** The value of the `roomchat_connections` gauge. */
async function connections(s) {
  const text = await (await fetch(`${s.url}metrics`, { signal: AbortSignal.timeout(WAIT) })).text();
  const line = text.split('\n').find((l) => l.startsWith('roomchat_connections '));
  assert.ok(line, 'the gauge is there');
  return Number(line.split(' ')[1]);
}

const seqs = (msgs) => msgs.map((m) => m.seq);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test('io() with default options polls, upgrades on the HTTP port, and chats with native clients in one order', async () => {
  const s = await server();
  const room = 'one-port';
  const onWsPort = await nativeJoin(s.wsPort, 'ann', room);
  const onHttpPort = await nativeJoin(s.httpPort, 'bob', room); // the HTTP port's /ws
  const socket = sio(s, { reconnection: true }); // literally io(url): every option at its default
  let drops = 0;
  socket.on('disconnect', () => { drops++; });
  const connected = next(socket, 'connected');
  const heard = [];
  socket.on('chatMessage', (m) => heard.push(m));

  await next(socket, 'connect'); // the upgrade may be over by now, or not
  assert.equal(socket.transports.atOpen, 'polling', 'the default client opens its session with long-polling');
  const limits = (await connected).limits;
  assert.deepEqual(limits, { maxMessageBytes: 65536, maxTextChars: 2000, rateLimit: null });
  const joined = next(socket, 'joined');
  assert.deepEqual(await socket.emitWithAck('joinRoom', { username: 'sio', room }), { ok: true, room });
  const me = await joined;
  assert.deepEqual(me.users.map((u) => u.username), ['ann', 'bob', 'sio']);
  for (const c of [onWsPort, onHttpPort]) await c.waitFor((f) => f.event === 'userJoined' && f.data.id === me.id, 'userJoined sio');
  assert.deepEqual(await socket.emitWithAck('chatMessage', { text: 'from sio, early' }), { ok: true, seq: 1 });

  assert.equal(await within(socket.upgraded, WAIT, 'the upgrade event'), 'websocket');
  assert.equal(socket.io.engine.transport.name, 'websocket', 'the client ends up on WebSocket');
  assert.ok(socket.connected);
  const polled = await rawPoll(s, socket.io.engine.id);
  assert.equal(polled.status, 400, `after the upgrade, polling that sid is refused: ${JSON.stringify(polled)}`);

  assert.deepEqual((await onWsPort.request('chatMessage', { text: 'from ann' })).data, { ok: true, seq: 2 });
  assert.deepEqual((await onHttpPort.request('chatMessage', { text: 'from bob' })).data, { ok: true, seq: 3 });
  assert.deepEqual(await socket.emitWithAck('chatMessage', 'from sio, bare string'), { ok: true, seq: 4 });

  const texts = ['from sio, early', 'from ann', 'from bob', 'from sio, bare string'];
  for (const c of [onWsPort, onHttpPort]) await c.waitFor((f) => f.event === 'chatMessage' && f.data.seq === 4, 'seq 4');
  await within((async () => { while (heard.length < 4) await sleep(10); })(), WAIT, 'four chatMessage events in the Socket.IO client');
  for (const msgs of [heard, onWsPort.chats(), onHttpPort.chats()]) {
    assert.deepEqual(seqs(msgs), [1, 2, 3, 4]);
    assert.deepEqual(msgs.map((m) => m.text), texts);
    assert.ok(msgs.every((m) => m.room === room));
  }
  assert.deepEqual(heard, onWsPort.chats(), 'the same data, ts included, for every member');
  assert.equal(drops, 0, 'no disconnect (and so no reconnect) on the way');

  socket.disconnect();
  for (const c of [onWsPort, onHttpPort]) {
    const left = await c.waitFor((f) => f.event === 'userLeft' && f.data.id === me.id, 'userLeft sio', 2_000);
    assert.deepEqual(left.data, { room, id: me.id, username: 'sio' });
  }
  onWsPort.close();
  onHttpPort.close();
});

test('io() with default options keeps the Socket.IO endpoint\'s features: acks, errors, bare strings, namespaces', async () => {
  const s = await server();
  for (const transports of [undefined, ['polling']]) {
    const label = transports ? 'polling only' : 'default (upgraded)';
    const socket = sio(s, transports ? { transports } : {});
    await next(socket, 'connect');
    if (!transports) await within(socket.upgraded, WAIT, 'upgrade');
    assert.equal(socket.io.engine.transport.name, transports ? 'polling' : 'websocket', label);

    const notInRoom = await socket.emitWithAck('chatMessage', { text: 'nobody hears' });
    assert.equal(notInRoom.code, 'not_in_room', label);
    assert.deepEqual(await socket.timeout(2000).emitWithAck('joinRoom', { username: 'a', room: `feat-${label}` }), { ok: true, room: `feat-${label}` }, label);
    const bad = await socket.emitWithAck('joinRoom', { username: 'a', room: 'x'.repeat(65) });
    assert.equal(bad.code, 'invalid_field', label);
    assert.equal(bad.field, 'room', label);
    const echoed = next(socket, 'chatMessage');
    assert.deepEqual(await socket.emitWithAck('chatMessage', 'a bare string'), { ok: true, seq: 1 }, label);
    assert.equal((await echoed).text, 'a bare string', label);
    assert.deepEqual(await socket.timeout(2000).emitWithAck('typing', { typing: false }), { ok: true }, label);
    // Without an ack id, an error comes as an `error` event.
    const error = next(socket, 'error');
    socket.emit('dance', {});
    assert.equal((await error).code, 'unknown_event', label);
    const binary = next(socket, 'error');
    socket.emit('chatMessage', Buffer.from([1, 2, 3]));
    assert.equal((await binary).code, 'bad_request', `${label}: a binary packet gets an error`);
    assert.deepEqual(await socket.emitWithAck('chatMessage', 'still usable'), { ok: true, seq: 2 }, label);
    socket.disconnect();
  }
  const admin = io(`http://127.0.0.1:${s.httpPort}/admin`, { reconnection: false });
  sockets.push(admin);
  const err = await next(admin, 'connect_error');
  assert.equal(err.message, 'Invalid namespace');
  admin.close();
});

test('a polling-only client stays across several ping intervals and still chats', async () => {
  const s = await server(['--ping-interval', '1', '--idle-timeout', '3']);
  const room = 'beat';
  const nat = await nativeJoin(s.wsPort, 'nat', room);
  const socket = sio(s, { transports: ['polling'] });
  let dropped = null;
  socket.on('disconnect', (reason) => { dropped = reason; });
  let pings = 0;
  socket.io.engine.on('ping', () => { pings++; });
  await next(socket, 'connect');
  const joined = next(socket, 'joined');
  assert.deepEqual(await socket.emitWithAck('joinRoom', { username: 'poller', room }), { ok: true, room });
  const me = await joined;

  await sleep(4_500); // past pingInterval + pingTimeout (4 s): only the heartbeat keeps it
  assert.equal(dropped, null, 'the client was not dropped');
  assert.ok(pings >= 3, `pinged every second over polling (${pings} pings in 4.5 s)`);
  assert.equal(socket.io.engine.transport.name, 'polling');
  assert.ok(!nat.frames.some((f) => f.event === 'userLeft'), 'the room saw no userLeft');

  const heard = next(socket, 'chatMessage');
  assert.deepEqual(await socket.emitWithAck('chatMessage', 'still polling'), { ok: true, seq: 1 });
  assert.equal((await heard).text, 'still polling');
  const seen = await nat.waitFor((f) => f.event === 'chatMessage', 'the poller\'s message');
  assert.equal(seen.data.id, me.id);
  const toPoller = next(socket, 'chatMessage'); // listening before it is sent: it may beat the native's ack
  assert.deepEqual((await nat.request('chatMessage', { text: 'to the poller' })).data, { ok: true, seq: 2 });
  assert.equal((await toPoller).seq, 2);
  socket.disconnect();
  await nat.waitFor((f) => f.event === 'userLeft' && f.data.id === me.id, 'userLeft on disconnect', 2_000);
  nat.close();
});

test('a polling client that answers every ping is kept, even with a ping timeout shorter than the interval', async () => {
  // PROTOCOL.md (One port): a polling session is dropped "when silent past the
  // ping interval plus the ping timeout"; Engine.IO's own rule is the same (a
  // pong is due pingTimeout after each ping). With 2 s and 1 s, a client that
  // pongs every ping is never silent for 3 s, so it must stay.
  const s = await server(['--ping-interval', '2', '--idle-timeout', '1']);
  const room = 'short-timeout';
  const nat = await nativeJoin(s.wsPort, 'nat', room);
  const socket = sio(s, { transports: ['polling'] });
  let dropped = null;
  socket.on('disconnect', (reason) => { dropped = reason; });
  let pings = 0;
  socket.io.engine.on('ping', () => { pings++; });
  await next(socket, 'connect');
  assert.deepEqual(await socket.emitWithAck('joinRoom', { username: 'poller', room }), { ok: true, room });
  await sleep(3_500);
  assert.equal(dropped, null, `dropped (${dropped}) after ${pings} ping(s), each answered at once`);
  assert.ok(pings >= 1, 'pinged');
  assert.ok(!nat.frames.some((f) => f.event === 'userLeft'), 'the room saw no userLeft');
  assert.deepEqual(await socket.emitWithAck('chatMessage', 'still here'), { ok: true, seq: 1 });
  socket.disconnect();
  nat.close();
});

test('a polling client that stops polling is dropped: userLeft within the ping timeout, its sid forgotten', async (t) => {
  const s = await server(['--ping-interval', '1', '--idle-timeout', '3']);
  const room = 'vanish';
  const nat = await nativeJoin(s.wsPort, 'nat', room);
  const socket = sio(s, { transports: ['polling'] });
  await next(socket, 'connect');
  const joined = next(socket, 'joined');
  assert.deepEqual(await socket.emitWithAck('joinRoom', { username: 'ghost', room }), { ok: true, room });
  const me = await joined;
  await nat.waitFor((f) => f.event === 'userJoined' && f.data.id === me.id, 'userJoined ghost');
  const sid = socket.io.engine.id;
  assert.equal(await connections(s), 2, 'the polling session counts as a connection');

  // The client vanishes: it sends nothing more and polls no more (a held GET
  // may still be answered, but its pong is never sent).
  const transport = socket.io.engine.transport;
  transport.doPoll = () => {};
  transport.doWrite = () => {};
  const t0 = Date.now();
  const bound = 1_000 + 3_000 + 1_500; // pingInterval + pingTimeout + slack
  const left = await nat.waitFor((f) => f.event === 'userLeft' && f.data.id === me.id, 'userLeft for the vanished poller', bound);
  const ms = Date.now() - t0;
  t.diagnostic(`userLeft ${ms} ms after the client went silent`);
  assert.deepEqual(left.data, { room, id: me.id, username: 'ghost' });
  assert.ok(ms >= 1_000, `dropped for its silence, not at once (${ms} ms)`);
  const gone = await rawPoll(s, sid);
  assert.equal(gone.status, 400, `a poll with the dropped sid: ${JSON.stringify(gone)}`);
  assert.deepEqual(JSON.parse(gone.body), { code: 1, message: 'Session ID unknown' });
  assert.equal(await connections(s), 1, 'and it no longer counts');
  socket.close();
  nat.close();
});

test('a polling session counts toward --max-connections', async () => {
  const s = await server(['--max-connections', '1']);
  const first = sio(s, { transports: ['polling'] });
  await next(first, 'connect');
  const second = sio(s, { transports: ['polling'] });
  const refused = await next(second, 'connect_error');
  assert.match(refused.message, /xhr poll error/);
  const res = await fetch(`http://127.0.0.1:${s.httpPort}/socket.io/?EIO=4&transport=polling`, { signal: AbortSignal.timeout(WAIT) });
  assert.equal(res.status, 503, 'a handshake past the bound');
  await res.arrayBuffer();
  const ws = new WebSocket(`ws://127.0.0.1:${s.wsPort}/ws`);
  ws.on('error', () => {});
  const [, wsRes] = await within(once(ws, 'unexpected-response'), WAIT, 'the native handshake answer');
  assert.equal(wsRes.statusCode, 503, 'a native client past the bound');
  wsRes.resume();
  first.disconnect();
  second.close();
  await within((async () => { while (await connections(s) !== 0) await sleep(20); })(), WAIT, 'the slot given back');
  const third = sio(s, { transports: ['polling'] });
  await next(third, 'connect');
  third.disconnect();
});

test('a polling session has the rate limit of any client: every packet takes a token', async () => {
  const s = await startServer({ args: ['--rate-limit', '5'] }); // a bucket of 10, refilled at 5/s
  started.push(s);
  const socket = sio(s, { transports: ['polling'] });
  await next(socket, 'connect');
  assert.deepEqual(await socket.emitWithAck('joinRoom', { username: 'quick', room: 'limited' }), { ok: true, room: 'limited' });
  // 30 at once: the client sends them in one or a few POSTs.
  const replies = await Promise.all(Array.from({ length: 30 }, (_, i) => socket.timeout(WAIT).emitWithAck('chatMessage', `m${i}`)));
  const ok = replies.filter((r) => r.ok).length;
  const limited = replies.filter((r) => r.code === 'rate_limited').length;
  assert.equal(ok + limited, 30, JSON.stringify(replies));
  assert.ok(ok >= 9 && ok <= 12, `about the 9 tokens left passed (${ok} did)`);
  assert.equal(socket.io.engine.transport.name, 'polling');
  socket.disconnect();
});

/**
 * A native client sends `count` chat messages, each after the previous one's
 * ack, with a short pause every 10 so the burst lasts a few hundred ms whatever
 * the machine. Resolves with the acked seqs.
 */
async function burst(client, count, label) {
  const acked = [];
  for (let i = 0; i < count; i++) {
    const reply = await client.request('chatMessage', { text: `${label} ${i}` });
    assert.equal(reply.event, 'ack', JSON.stringify(reply));
    acked.push(reply.data.seq);
    if (i % 10 === 9) await sleep(10);
  }
  return acked;
}

/** Collects the Socket.IO client's chatMessage events with the transport each came on. */
function collect(socket) {
  const got = [];
  socket.on('chatMessage', (m) => got.push({ ...m, transport: socket.io.engine.transport.name }));
  got.until = (n, ms) => within((async () => { while (got.length < n) await sleep(5); })(), ms, `${n} chatMessage events (got ${got.length})`);
  return got;
}

test('a burst that crosses the upgrade reaches the Socket.IO client exactly once, in order, with no gap', async (t) => {
  const s = await server();
  const room = 'burst';
  const sender = await nativeJoin(s.wsPort, 'sender', room);
  const watcher = await nativeJoin(s.httpPort, 'watcher', room);
  const socket = sio(s);
  // Hold the client's WebSocket probe back until it has 20 messages of the
  // burst over polling, as a slow network would: the burst is then sure to
  // start over polling, and to go on during the upgrade and after it.
  // (_probe: engine.io-client 6.6.8's own method, called once per upgrade on open.)
  const engine = socket.io.engine;
  const probe = engine._probe;
  assert.equal(typeof probe, 'function', 'engine.io-client still has _probe (update this test if not)');
  let held = null;
  engine._probe = (name) => { held = () => probe.call(engine, name); };
  const got = collect(socket);
  socket.on('chatMessage', () => { if (got.length === 20 && held) held(); }); // after collect's own handler
  socket.on('connect', () => socket.emit('joinRoom', { username: 'sio', room }));
  const joined = await next(socket, 'joined');
  assert.deepEqual(joined.history, []);
  await sender.waitFor((f) => f.event === 'userJoined' && f.data.id === joined.id, 'userJoined sio');
  assert.equal(engine.transport.name, 'polling', 'the burst starts while the client polls');

  // The Socket.IO client talks too, while the transport changes under it.
  const own = (async () => {
    const acks = [];
    for (let i = 0; i < 30; i++) {
      acks.push(await socket.timeout(WAIT).emitWithAck('chatMessage', `sio ${i}`));
      await sleep(8);
    }
    return acks;
  })();
  const acked = await burst(sender, 300, 'native');
  const ownAcks = await own;
  assert.ok(held, 'the client asked to upgrade');
  assert.equal(await within(socket.upgraded, WAIT, 'the upgrade event'), 'websocket');
  const total = 330;
  await got.until(total, WAIT);
  await sleep(100); // anything extra (a repeat) would show now
  assert.equal(got.length, total, 'nothing repeated');
  assert.deepEqual(seqs(got), range(1, total), 'every seq once, in order, no gap');
  const over = (name) => got.filter((m) => m.transport === name).length;
  t.diagnostic(`received over polling ${over('polling')}, over websocket ${over('websocket')}`);
  assert.ok(over('polling') > 0 && over('websocket') > 0,
    `the stream crossed the upgrade (polling ${over('polling')}, websocket ${over('websocket')})`);

  // The senders' acks, and the native members' view: the same order, the same seq.
  assert.ok(ownAcks.every((a) => a.ok === true), JSON.stringify(ownAcks.find((a) => !a.ok)));
  const bySeq = new Map(got.map((m) => [m.seq, m]));
  for (const [i, seq] of acked.entries()) assert.equal(bySeq.get(seq).text, `native ${i}`);
  for (const [i, a] of ownAcks.entries()) assert.equal(bySeq.get(a.seq).text, `sio ${i}`);
  for (const c of [sender, watcher]) {
    await c.waitFor((f) => f.event === 'chatMessage' && f.data.seq === total, `seq ${total}`);
    assert.deepEqual(c.chats().map((m) => [m.seq, m.text]), got.map((m) => [m.seq, m.text]));
  }
  socket.disconnect();
  sender.close();
  watcher.close();
});

test('a burst racing an unhindered upgrade: history plus live messages are every seq exactly once', async (t) => {
  const s = await server(['--history', '300']);
  const room = 'race';
  const sender = await nativeJoin(s.wsPort, 'sender', room);
  // The burst starts as the Socket.IO client starts connecting: messages
  // before its join come in `joined.history`, the rest live, over polling or
  // queued during the upgrade or over WebSocket, whatever the timing.
  const socket = sio(s);
  const got = collect(socket);
  let joined = null;
  socket.on('joined', (j) => { joined = j; });
  socket.on('connect', () => socket.emit('joinRoom', { username: 'sio', room }));
  const acked = await burst(sender, 300, 'native');
  assert.equal(await within(socket.upgraded, WAIT, 'the upgrade event'), 'websocket');
  await within((async () => { while (!joined) await sleep(5); })(), WAIT, 'joined');
  const history = seqs(joined.history);
  await got.until(300 - history.length, WAIT);
  await sleep(100);
  t.diagnostic(`history ${history.length}; live over polling ${got.filter((m) => m.transport === 'polling').length}, over websocket ${got.filter((m) => m.transport === 'websocket').length}`);
  assert.deepEqual([...history, ...seqs(got)], range(1, 300), `history ${history.length}, live ${got.length}: every seq once, in order`);
  assert.deepEqual(acked, range(1, 300));
  assert.equal(socket.io.engine.transport.name, 'websocket');
  socket.disconnect();
  sender.close();
});
