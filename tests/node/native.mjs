// A native roomchat client for the Node tests: `{"event","data","ack"}`
// frames over the `ws` package, read in order from a queue.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import WebSocket from 'ws';

/**
 * Connects to `ws://127.0.0.1:<wsPort>/ws` and reads `connected` (its id is
 * `client.id`). Every wait fails after `wait` ms.
 */
export async function native(wsPort, wait = 5_000) {
  const ws = new WebSocket(`ws://127.0.0.1:${wsPort}/ws`);
  const queue = [];
  const waiters = [];
  ws.on('message', (data) => {
    const frame = JSON.parse(data.toString());
    const w = waiters.shift();
    if (w) w(frame); else queue.push(frame);
  });
  await once(ws, 'open');
  let nextAck = 1;
  const client = {
    ws,
    /** The next frame. */
    recv() {
      if (queue.length) return Promise.resolve(queue.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('native client: no frame in time')), wait);
        waiters.push((f) => { clearTimeout(timer); resolve(f); });
      });
    },
    /** The next frame must be `event`; its data. */
    async expect(event) {
      const f = await client.recv();
      assert.equal(f.event, event, JSON.stringify(f));
      return f.data;
    },
    /** The data of the next `event`, skipping other frames. */
    async until(event) {
      for (;;) {
        const f = await client.recv();
        if (f.event === event) return f.data;
      }
    },
    send(frame) { ws.send(JSON.stringify(frame)); },
    /** Sends `event` with an ack: the frames before the reply, and the reply. */
    async request(event, data) {
      const ack = nextAck++;
      client.send({ event, data, ack });
      const frames = [];
      for (;;) {
        const f = await client.recv();
        if (f.ack === ack) return { frames, reply: f };
        frames.push(f);
      }
    },
    /** Sends a chat message; its seq. */
    async say(text) {
      const { reply } = await client.request('chatMessage', { text });
      assert.equal(reply.event, 'ack', JSON.stringify(reply));
      return reply.data.seq;
    },
  };
  client.id = (await client.expect('connected')).id;
  return client;
}
