// Starting and stopping a real roomchat for the Node tests (browser and Socket.IO).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(HERE, process.env.ROOMCHAT_BIN || '../../target/debug/roomchat');
const WWW = path.resolve(HERE, process.env.ROOMCHAT_WWW || '../../www');
const ARTIFACTS = path.join(HERE, 'artifacts');

export const servers = new Set();
// Last resort if the runner dies between tests: never leave a server behind.
process.on('exit', () => { for (const s of servers) s.child.kill('SIGKILL'); });

/**
 * Starts roomchat; resolves once its startup line names the bound ports.
 * `www`: the folder it serves pages from (default: the repository's www/).
 */
export async function startServer({ httpPort = 0, wsPort = 0, args = [], www = WWW } = {}) {
  const argv = ['--host', '127.0.0.1', '--http-port', String(httpPort), '--ws-port', String(wsPort), '--www', www, ...args];
  const child = spawn(BIN, argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  let stderr = '';
  let log = null; // E2E_SERVER_LOG=1 keeps each server's whole stderr in artifacts/
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-20_000);
    if (log) log.write(d);
  });
  const server = {
    child,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return { code: child.exitCode, signal: child.signalCode };
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const t0 = Date.now();
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      const [code, signal] = await exited;
      clearTimeout(timer);
      servers.delete(server);
      return { code, signal, ms: Date.now() - t0 };
    },
  };
  servers.add(server);
  try {
    const line = await new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`no startup line within 10 s; stderr:\n${stderr}`)), 10_000);
      child.stdout.on('data', (d) => {
        out += d;
        const nl = out.indexOf('\n');
        if (nl >= 0) { clearTimeout(timer); resolve(out.slice(0, nl)); }
      });
      child.once('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`roomchat exited early (${code ?? sig}); stderr:\n${stderr}`)); });
      child.once('error', (e) => { clearTimeout(timer); reject(e); });
    });
    const http = /http:\/\/[^\s/]+:(\d+)/.exec(line);
    const ws = /ws:\/\/[^\s/]+:(\d+)/.exec(line);
    assert.ok(http && ws, `startup line names both ports: ${line}`);
    server.httpPort = Number(http[1]);
    server.wsPort = Number(ws[1]);
    server.url = `http://127.0.0.1:${server.httpPort}/`;
    if (process.env.E2E_SERVER_LOG === '1') {
      log = createWriteStream(path.join(ARTIFACTS, `server-${server.httpPort}-${Date.now()}.log`));
      log.write(stderr);
      child.once('exit', () => log.end());
    }
    return server;
  } catch (e) {
    await server.stop();
    throw e;
  }
}

/** Restart on the same ports; the old sockets may still be closing, so retry the bind briefly. */
export async function restartServer(old, args) {
  let lastError;
  for (let i = 0; i < 20; i++) {
    try {
      return await startServer({ httpPort: old.httpPort, wsPort: old.wsPort, args });
    } catch (e) {
      lastError = e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw lastError;
}

