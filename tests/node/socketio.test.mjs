// The official socket.io-client (v4) against roomchat's /socket.io/ endpoint,
// side by side with native WebSocket clients in the same rooms.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import { native as nativeClient } from './native.mjs';
import { startServer, restartServer } from './server.mjs';

const WAIT = 5_000; // bound for any single wait
const started = [];
after(async () => { for (const s of started) await s.stop(); });

async function server(args = []) {
  const s = await startServer({ args: ['--rate-limit', 'off', ...args] });
  started.push(s);
  return s;
}

/** Resolves with the first `event` on `emitter`, or fails after WAIT. */
function next(emitter, event, ms = WAIT) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { emitter.off(event, on); reject(new Error(`no ${event} within ${ms} ms`)); }, ms);
    const on = (...args) => { clearTimeout(timer); resolve(args.length > 1 ? args : args[0]); };
    emitter.once(event, on);
  });
}

/** A socket.io-client connected over WebSocket; resolves with its `connected` data too. */
async function sio(s, opts = {}) {
  const socket = io(`http://127.0.0.1:${s.wsPort}`, { transports: ['websocket'], reconnection: false, ...opts });
  const connected = next(socket, 'connected');
  await next(socket, 'connect');
  return { socket, connected: await connected };
}


test('connects over WebSocket and gets the connected event', async () => {
  const s = await server();
  const { socket, connected } = await sio(s);
  assert.ok(socket.connected);
  assert.equal(typeof connected.id, 'string');
  assert.deepEqual(connected.limits, { maxMessageBytes: 65536, maxTextChars: 2000, rateLimit: null });
  socket.disconnect();
});

test('chats both ways with a native client in one room, one seq sequence', async () => {
  const s = await server();
  const nat = await nativeClient(s.wsPort, WAIT);
  nat.send({ event: 'joinRoom', data: { username: 'nat', room: 'mixed' }, ack: 1 });
  await nat.expect('joined');
  await nat.expect('ack');
  const { socket } = await sio(s);
  const joined = next(socket, 'joined');
  const reply = await socket.emitWithAck('joinRoom', { username: 'sio', room: 'mixed' });
  assert.deepEqual(reply, { ok: true, room: 'mixed' });
  const me = await joined;
  assert.deepEqual(me.users.map((u) => u.username), ['nat', 'sio']);
  assert.equal((await nat.expect('userJoined')).username, 'sio');

  // Socket.IO → both; a bare string is a chat text, as the original client sends it.
  const echoed = next(socket, 'chatMessage');
  const ack = await socket.emitWithAck('chatMessage', 'hello from socket.io');
  assert.deepEqual(ack, { ok: true, seq: 1 });
  assert.equal((await echoed).text, 'hello from socket.io');
  const seen = await nat.expect('chatMessage');
  assert.equal(seen.seq, 1);
  assert.equal(seen.username, 'sio');

  // Native → both.
  const heard = next(socket, 'chatMessage');
  nat.send({ event: 'chatMessage', data: { text: 'hello from ws' } });
  assert.equal((await nat.expect('chatMessage')).seq, 2);
  const msg = await heard;
  assert.equal(msg.seq, 2);
  assert.equal(msg.text, 'hello from ws');
  assert.equal(msg.room, 'mixed');

  // typing from Socket.IO reaches the native client only.
  socket.emit('typing', { typing: true });
  assert.deepEqual(await nat.expect('typing'), { room: 'mixed', id: me.id, username: 'sio', typing: true });
  socket.disconnect();
  assert.equal((await nat.expect('userLeft')).username, 'sio');
  nat.ws.close();
});

test('acks carry the native reply or the error, and honour a timeout', async () => {
  const s = await server();
  const { socket } = await sio(s);
  const notInRoom = await socket.emitWithAck('chatMessage', { text: 'nobody hears' });
  assert.equal(notInRoom.code, 'not_in_room');
  assert.deepEqual(await socket.timeout(2000).emitWithAck('joinRoom', { username: 'a', room: 'r' }), { ok: true, room: 'r' });
  const bad = await socket.emitWithAck('joinRoom', { username: 'a', room: 'x'.repeat(65) });
  assert.equal(bad.code, 'invalid_field');
  assert.equal(bad.field, 'room');
  assert.deepEqual(await socket.timeout(2000).emitWithAck('typing', { typing: false }), { ok: true });
  // Without an ack id, an error comes as an `error` event.
  const error = next(socket, 'error');
  socket.emit('dance', {});
  assert.equal((await error).code, 'unknown_event');
  socket.disconnect();
});

test('another namespace is refused with CONNECT_ERROR', async () => {
  const s = await server();
  const socket = io(`http://127.0.0.1:${s.wsPort}/admin`, { transports: ['websocket'], reconnection: false });
  const err = await next(socket, 'connect_error');
  assert.equal(err.message, 'Invalid namespace');
  socket.close();
});

test('a polling-only client fails clearly with the Engine.IO error answer', async () => {
  const s = await server();
  const res = await fetch(`http://127.0.0.1:${s.wsPort}/socket.io/?EIO=4&transport=polling`);
  assert.equal(res.status, 400);
  assert.deepEqual(await res.json(), { code: 0, message: 'Transport unknown' });
  // A WebSocket upgrade for Engine.IO 3: refused before the upgrade, with engine.io's body.
  const v3 = new WebSocket(`ws://127.0.0.1:${s.wsPort}/socket.io/?EIO=3&transport=websocket`);
  v3.on('error', () => {});
  const [, res3] = await once(v3, 'unexpected-response');
  assert.equal(res3.statusCode, 400);
  let body = '';
  for await (const chunk of res3) body += chunk;
  assert.deepEqual(JSON.parse(body), { code: 5, message: 'Unsupported protocol version' });
  // A plain GET for the websocket transport (no upgrade): engine.io's "Bad request".
  const plain = await fetch(`http://127.0.0.1:${s.wsPort}/socket.io/?EIO=4&transport=websocket`);
  assert.equal(plain.status, 400);
  assert.deepEqual(await plain.json(), { code: 3, message: 'Bad request' });
  const socket = io(`http://127.0.0.1:${s.wsPort}`, { transports: ['polling'], reconnection: false });
  const err = await next(socket, 'connect_error');
  assert.match(err.message, /xhr poll error|400/);
  socket.close();
});

test('the heartbeat keeps a connection over several ping intervals; a silent one is dropped', async () => {
  const s = await server(['--ping-interval', '1', '--idle-timeout', '2']);
  const { socket } = await sio(s);
  let dropped = false;
  socket.on('disconnect', () => { dropped = true; });
  await socket.emitWithAck('joinRoom', { username: 'steady', room: 'beat' });
  // A raw Engine.IO peer that never answers the server's "2" with "3".
  const raw = new WebSocket(`ws://127.0.0.1:${s.wsPort}/socket.io/?EIO=4&transport=websocket`);
  const packets = [];
  raw.on('message', (d) => packets.push(d.toString()));
  await once(raw, 'open');
  raw.send('40');
  const closed = once(raw, 'close');
  const [code] = await Promise.race([closed, new Promise((_, rej) => setTimeout(() => rej(new Error('silent peer not dropped')), 5_000))]);
  assert.equal(code, 1001);
  assert.ok(packets[0].startsWith('0{'), packets[0]);
  const open = JSON.parse(packets[0].slice(1));
  assert.deepEqual([open.pingInterval, open.pingTimeout, open.upgrades, open.maxPayload], [1000, 1000, [], 65536]);
  assert.ok(packets.includes('2'), 'the server pinged');
  assert.ok(!dropped, 'the answering client stayed');
  assert.deepEqual(await socket.emitWithAck('chatMessage', 'still here'), { ok: true, seq: 1 });
  socket.disconnect();
});

test('binary packets get an error event', async () => {
  const s = await server();
  const { socket } = await sio(s);
  const error = next(socket, 'error');
  socket.emit('chatMessage', Buffer.from([1, 2, 3]));
  assert.equal((await error).code, 'bad_request');
  socket.disconnect();
});

test('a client reconnects after the server restarts and chats again', async () => {
  const s = await server();
  const socket = io(`http://127.0.0.1:${s.wsPort}`, { transports: ['websocket'], reconnectionDelay: 200, reconnectionDelayMax: 500 });
  after(() => socket.disconnect());
  await next(socket, 'connect');
  await socket.emitWithAck('joinRoom', { username: 'phoenix', room: 'r' });
  const gone = next(socket, 'disconnect');
  const stopped = await s.stop();
  assert.equal(stopped.code, 0);
  const [reason] = [].concat(await gone);
  assert.ok(['transport close', 'transport error'].includes(reason), reason);
  const s2 = await restartServer(s, ['--rate-limit', 'off']);
  started.push(s2);
  await next(socket.io, 'reconnect', 10_000);
  assert.deepEqual(await socket.emitWithAck('joinRoom', { username: 'phoenix', room: 'r' }), { ok: true, room: 'r' });
  assert.deepEqual(await socket.emitWithAck('chatMessage', 'back'), { ok: true, seq: 1 });
  socket.disconnect();
});

test('shares rooms and order with native clients under load', async () => {
  const s = await server();
  const nat = await nativeClient(s.wsPort, WAIT);
  nat.send({ event: 'joinRoom', data: { username: 'nat', room: 'load' } });
  await nat.expect('joined');
  const { socket } = await sio(s);
  await socket.emitWithAck('joinRoom', { username: 'sio', room: 'load' });
  await nat.expect('userJoined');
  const seqs = [];
  const all = new Promise((resolve) => socket.on('chatMessage', (m) => { seqs.push(m.seq); if (seqs.length === 200) resolve(); }));
  for (let i = 0; i < 100; i++) {
    nat.send({ event: 'chatMessage', data: { text: `n${i}` } });
    socket.emit('chatMessage', `s${i}`);
  }
  await Promise.race([all, new Promise((_, rej) => setTimeout(() => rej(new Error(`only ${seqs.length} of 200`)), WAIT))]);
  assert.deepEqual(seqs, Array.from({ length: 200 }, (_, i) => i + 1));
  const nativeSeqs = [];
  while (nativeSeqs.length < 200) {
    const f = await nat.recv();
    if (f.event === 'chatMessage') nativeSeqs.push(f.data.seq);
  }
  assert.deepEqual(nativeSeqs, seqs);
  socket.disconnect();
  nat.ws.close();
});
