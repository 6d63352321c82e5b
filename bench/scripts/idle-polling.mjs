// Idle long-polling clients: what N Socket.IO clients that never upgrade
// (`transports: ["polling"]`, the official socket.io-client from tests/node)
// cost a server in threads and RSS. Each client connects, joins one of R
// rooms (with an ack), and is then held idle: an idle long-polling client
// always has one GET held open. One chat message per room checks that every
// client is still served; then all disconnect and the server should give
// its threads back.
//
//   node bench/scripts/idle-polling.mjs --url http://127.0.0.1:3000 --pid PID \
//        [--clients 1000] [--rooms 10] [--hold 5]
//
// Prints one JSON line. Every wait is bounded; exit status 1 if a check fails.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(new URL("../../tests/node/package.json", import.meta.url));
const { io } = require("socket.io-client");

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const url = arg("url");
const pid = Number(arg("pid"));
const clients = Number(arg("clients", 1000));
const rooms = Number(arg("rooms", 10));
const holdMs = Number(arg("hold", 5)) * 1000;
if (!url || !pid) {
  console.error("usage: idle-polling.mjs --url http://HOST:PORT --pid PID [--clients N] [--rooms R] [--hold S]");
  process.exit(2);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** VmRSS (KiB) and Threads of the server, from /proc. */
function usage() {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name) => Number(status.match(new RegExp(`^${name}:\\s+(\\d+)`, "m"))[1]);
  return { rssKiB: field("VmRSS"), threads: field("Threads") };
}
/** Waits until `done()` holds, checking every 20 ms; false after `ms`. */
async function until(done, ms) {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) return false;
    await sleep(20);
  }
  return true;
}

const before = usage();
const sockets = [];
let joined = 0;
let failed = 0;
const started = Date.now();
// 50 handshakes in flight at most: the server's listen backlog is 128.
for (let i = 0; i < clients; i++) {
  while (sockets.length - joined - failed >= 50) await sleep(5);
  const socket = io(url, {
    transports: ["polling"],
    upgrade: false,
    forceNew: true,
    reconnection: false,
    timeout: 20000,
  });
  socket.got = 0;
  socket.on("chatMessage", () => socket.got++);
  socket.on("connect_error", () => failed++);
  socket.on("connect", () => {
    socket.emit("joinRoom", { username: `p${i}`, room: `idle-${i % rooms}` }, (reply) => {
      if (reply && reply.ok) joined++;
      else failed++;
    });
  });
  sockets.push(socket);
}
const allJoined = await until(() => joined + failed >= clients, 120000);
const connectSecs = (Date.now() - started) / 1000;

// Held idle: every client has a GET waiting. Peak of a few samples.
let held = usage();
const holdEnd = Date.now() + holdMs;
while (Date.now() < holdEnd) {
  await sleep(250);
  const u = usage();
  if (u.rssKiB > held.rssKiB) held = { ...u };
  held.threads = Math.max(held.threads, u.threads);
}

// Still served: one message per room reaches all its members.
for (let r = 0; r < rooms && r < sockets.length; r++) {
  sockets[r].emit("chatMessage", { text: `still there ${r}` });
}
const delivered = await until(() => sockets.every((s) => s.got >= 1), 30000);
const got = sockets.filter((s) => s.got >= 1).length;

for (const s of sockets) s.disconnect();
// Threads come back once the held GETs are answered and their connections end.
await until(() => usage().threads <= before.threads + 2, 20000);
await sleep(500);
const after = usage();

const perClientKiB = (held.rssKiB - before.rssKiB) / clients;
console.log(
  JSON.stringify({
    scenario: "idle-polling",
    clients,
    rooms,
    joined,
    failed,
    connect_secs: connectSecs,
    delivered_to: got,
    before,
    held,
    after,
    rss_per_client_kib: Math.round(perClientKiB * 10) / 10,
    threads_per_client: Math.round(((held.threads - before.threads) / clients) * 100) / 100,
  }),
);
process.exit(allJoined && joined === clients && delivered ? 0 : 1);
