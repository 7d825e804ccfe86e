// Starts a real Faultline server for the tests (no mocks).
//
// Binary: $FAULTLINE_BIN, else <repo>/target/debug/faultline. Or $FAULTLINE_TEST_URL (and
// $FAULTLINE_TEST_TOKEN): a server already running, which is then neither started nor stopped.
// With $DATABASE_URL: `faultline migrate`, then `faultline serve`; without: `faultline up` with a
// private Postgres in a temporary directory (its built-in workers serve only the `default`
// queue, so every test uses a queue of its own).
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Client } from "../src/index.js";

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", ".."); // dist/test -> package
const READY_DEADLINE_MS = 90_000;
const STOP_DEADLINE_MS = 20_000;

export interface TestServer {
  baseUrl: string;
  token: string;
  client: Client;
  /** The server's output so far (for failure messages). */
  output(): string;
  stop(): Promise<void>;
}

export function binaryPath(): string {
  return process.env.FAULTLINE_BIN || resolve(packageRoot, "..", "..", "target", "debug", "faultline");
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

function run(bin: string, args: string[], env: NodeJS.ProcessEnv): ChildProcess {
  return spawn(bin, args, { env, stdio: ["ignore", "pipe", "pipe"] });
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((r) => child.once("exit", (code) => r(code)));
}

export async function startServer(): Promise<TestServer> {
  // A server you already run: FAULTLINE_TEST_URL (and FAULTLINE_TEST_TOKEN if it needs one).
  const external = process.env.FAULTLINE_TEST_URL;
  if (external) {
    const token = process.env.FAULTLINE_TEST_TOKEN ?? "";
    const baseUrl = external.replace(/\/+$/, "");
    return {
      baseUrl,
      token,
      client: new Client({ baseUrl, ...(token ? { token } : {}), timeoutMs: 10_000 }),
      output: () => "",
      stop: async () => undefined,
    };
  }
  const bin = binaryPath();
  if (!existsSync(bin)) {
    throw new Error(
      `faultline binary not found at ${bin}: build it (cargo build -p faultline-queue-cli) or set FAULTLINE_BIN to one`,
    );
  }
  const port = await freePort();
  const listen = `127.0.0.1:${port}`;
  const token = randomBytes(16).toString("hex");
  const env: NodeJS.ProcessEnv = { ...process.env, FAULTLINE_API_TOKEN: token, RUST_LOG: process.env.RUST_LOG ?? "warn" };
  let logs = "";
  const keep = (chunk: Buffer) => {
    logs += chunk.toString();
    if (logs.length > 200_000) logs = logs.slice(-100_000);
  };

  let dataDir: string | undefined;
  let child: ChildProcess;
  if (process.env.DATABASE_URL) {
    const migrate = run(bin, ["migrate"], env);
    migrate.stdout?.on("data", keep);
    migrate.stderr?.on("data", keep);
    const code = await exited(migrate);
    if (code !== 0) throw new Error(`faultline migrate exited with ${code}:\n${logs}`);
    child = run(bin, ["serve", "--listen", listen], env);
  } else {
    // `up` runs its Postgres as the `postgres` user when we are root: that user must be able to
    // enter the directory.
    dataDir = await mkdtemp(join(tmpdir(), "faultline-ts-"));
    await chmod(dataDir, 0o755);
    child = run(bin, ["up", "--data-dir", join(dataDir, "data"), "--listen", listen], env);
  }
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);

  const baseUrl = `http://${listen}`;
  const cleanup = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_DEADLINE_MS);
      await exited(child);
      clearTimeout(timer);
    }
    if (dataDir) await rm(dataDir, { recursive: true, force: true }).catch(() => undefined);
  };

  // Wait for /ready, with a deadline; fail early if the process dies.
  const deadline = Date.now() + READY_DEADLINE_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      await cleanup();
      throw new Error(`faultline exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${logs}`);
    }
    try {
      const response = await fetch(`${baseUrl}/ready`, { signal: AbortSignal.timeout(2_000) });
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await cleanup();
      throw new Error(`faultline was not ready within ${READY_DEADLINE_MS} ms:\n${logs}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  return {
    baseUrl,
    token,
    client: new Client({ baseUrl, token, timeoutMs: 10_000 }),
    output: () => logs,
    stop: cleanup,
  };
}

/** A queue name no other test (nor `up`'s built-in workers) uses. */
export function uniqueQueue(prefix = "ts"): string {
  return `${prefix}-${randomBytes(5).toString("hex")}`;
}

/** Poll `check` until it returns a value other than undefined, or fail after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 10_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ""}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
