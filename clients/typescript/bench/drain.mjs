#!/usr/bin/env node
// Drain rate of ONE Node worker process: how many no-op jobs a second it works.
//
//   cd clients/typescript && npm run build && node bench/drain.mjs            # 3 runs of 50,000
//   node bench/drain.mjs --bin /tmp/faultline-rel/faultline --runs 5 --jobs 20000
//   node bench/drain.mjs --url http://127.0.0.1:8000                          # a server you run
//
// Without --url it starts `faultline up` (--bin, default $FAULTLINE_BIN, else the repository's
// target/release/faultline) with a private Postgres in a temporary directory. Each run enqueues
// --jobs jobs of kind `noop_remote` on a fresh queue that nothing serves (batches of 1,000), then
// starts one worker process (this file with --work) whose handler returns at once, and times from
// its start until the queue counts every job succeeded (GET /v1/queues).
//
// Per run it prints jobs/s, the CPU seconds of the worker process, of the server and of its
// Postgres (when it started them), and the HTTP requests the server saw per route (its /metrics).
// Last line: the median jobs/s.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, mkdtempSync, chmodSync, rmSync, openSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "..", "dist", "src", "index.js");
if (!existsSync(dist)) {
  console.error(`drain: ${dist} is missing: run \`npm run build\` in clients/typescript first`);
  process.exit(2);
}
const { Client, Worker } = await import(dist);

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    bin: { type: "string", default: process.env.FAULTLINE_BIN || resolve(here, "..", "..", "..", "target", "release", "faultline") },
    jobs: { type: "string", default: "50000" },
    runs: { type: "string", default: "3" },
    concurrency: { type: "string", default: "2000" },
    "no-batch": { type: "boolean", default: false },
    work: { type: "boolean", default: false },
    queue: { type: "string" },
  },
});
const jobs = Number(args.jobs);
const concurrency = Number(args.concurrency);

if (args.work) {
  // The worker process: one Worker, a handler that returns at once.
  const worker = new Worker({
    baseUrl: args.url,
    queues: [args.queue],
    concurrency,
    pollWaitMs: 1_000,
    graceMs: 5_000,
    batchCompletions: !args["no-batch"],
  });
  worker.handle("noop_remote", () => undefined);
  worker.installSignalHandlers();
  await worker.run();
  process.exit(0);
}

const TICK = 100; // USER_HZ: /proc times are in 1/100 s on Linux
function cpuSeconds(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(")").pop().trim().split(/\s+/);
    return (Number(fields[11]) + Number(fields[12])) / TICK;
  } catch {
    return 0;
  }
}
function descendants(pid) {
  const children = new Map();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const ppid = Number(readFileSync(`/proc/${name}/stat`, "utf8").split(")").pop().trim().split(/\s+/)[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(name));
    } catch {
      // gone
    }
  }
  const out = [];
  const todo = [pid];
  while (todo.length) for (const c of children.get(todo.pop()) ?? []) out.push(c), todo.push(c);
  return out;
}
function treeCpu(pid) {
  if (pid === undefined) return [0, 0];
  return [cpuSeconds(pid), descendants(pid).reduce((sum, p) => sum + cpuSeconds(p), 0)];
}
async function requestCounts(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const counts = new Map();
  for (const m of text.matchAll(/^faultline_http_request_duration_seconds_count\{(.*?)\} (\S+)$/gm)) {
    const labels = Object.fromEntries([...m[1].matchAll(/(\w+)="(.*?)"/g)].map((l) => [l[1], l[2]]));
    counts.set(`${labels.method} ${labels.route}`, Number(m[2]));
  }
  return counts;
}
function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function startServer(workDir) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("FAULTLINE_") && k !== "DATABASE_URL"));
  const log = openSync(join(workDir, "server.log"), "a");
  const child = spawn(
    args.bin,
    ["up", "--data-dir", join(workDir, "data"), "--listen", `127.0.0.1:${port}`, "--metrics-listen", `127.0.0.1:${await freePort()}`],
    { env, stdio: ["ignore", log, log] },
  );
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`faultline exited with ${child.exitCode}; see ${join(workDir, "server.log")}`);
    try {
      if ((await fetch(`${url}/ready`, { signal: AbortSignal.timeout(2_000) })).ok) return { url, child };
    } catch {
      // not yet
    }
    await sleep(200);
  }
  child.kill("SIGKILL");
  throw new Error("faultline was not ready within 120 s");
}

async function oneRun(url, serverPid) {
  const client = new Client({ baseUrl: url, timeoutMs: 120_000 });
  const queue = `drain-${randomBytes(4).toString("hex")}`;
  const load = readFileSync("/proc/loadavg", "utf8").split(" ")[0]; // other work on the machine skews the figure
  for (let start = 0; start < jobs; start += 1000) {
    const n = Math.min(1000, jobs - start);
    await client.enqueueBatch(Array.from({ length: n }, (_, i) => ({ kind: "noop_remote", payload: { i: start + i }, queue })));
  }
  const before = await requestCounts(url);
  const [serverBefore, pgBefore] = treeCpu(serverPid);
  const command = [fileURLToPath(import.meta.url), "--work", "--url", url, "--queue", queue, "--concurrency", String(concurrency)];
  if (args["no-batch"]) command.push("--no-batch");
  const started = performance.now();
  const worker = spawn(process.execPath, command, { stdio: "inherit" });
  const exited = new Promise((r) => worker.once("exit", r));
  let elapsed;
  let workerCpu;
  try {
    for (;;) {
      await sleep(50);
      if (worker.exitCode !== null) throw new Error(`the worker exited with ${worker.exitCode}`);
      const row = (await client.request("GET", "/v1/queues")).data.queues.find((q) => q.queue === queue);
      if (row && row.succeeded >= jobs) break;
    }
    elapsed = (performance.now() - started) / 1000;
    workerCpu = cpuSeconds(worker.pid);
  } finally {
    worker.kill("SIGTERM");
    await exited;
  }
  const [serverAfter, pgAfter] = treeCpu(serverPid);
  const after = await requestCounts(url);
  const requests = [...after]
    .map(([k, v]) => [k, v - (before.get(k) ?? 0)])
    .filter(([k, v]) => v >= 1 && !k.includes("/v1/queues") && !k.includes("/metrics"))
    .sort();
  const total = requests.reduce((s, [, v]) => s + v, 0);
  const rate = jobs / elapsed;
  console.log(
    `${jobs} jobs in ${elapsed.toFixed(2)} s = ${Math.round(rate).toLocaleString("en")} jobs/s | CPU s: worker ${workerCpu.toFixed(2)}, ` +
      `server ${(serverAfter - serverBefore).toFixed(2)}, postgres ${(pgAfter - pgBefore).toFixed(2)} | ` +
      `${total} requests (${(total / jobs).toFixed(4)}/job): ${requests.map(([k, v]) => `${k} ${v}`).join(", ")} | load before ${load}`,
  );
  return rate;
}

let workDir;
let server;
let url = args.url;
try {
  if (!url) {
    workDir = mkdtempSync(join(tmpdir(), "faultline-drain-"));
    chmodSync(workDir, 0o755); // `up` under root runs Postgres as the postgres user
    server = await startServer(workDir);
    url = server.url;
  }
  console.log(`server ${url}; ${args.runs} runs of ${jobs} jobs, concurrency ${concurrency}, batched completions ${args["no-batch"] ? "off" : "on"}`);
  const rates = [];
  for (let i = 0; i < Number(args.runs); i++) rates.push(await oneRun(url, server?.child.pid));
  const sorted = [...rates].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  console.log(`median ${Math.round(median).toLocaleString("en")} jobs/s (runs: ${rates.map((r) => Math.round(r).toLocaleString("en")).join(", ")})`);
} finally {
  if (server) {
    const gone = new Promise((r) => server.child.once("exit", r));
    server.child.kill("SIGTERM");
    await Promise.race([gone, sleep(60_000)]);
  }
  if (workDir) rmSync(workDir, { recursive: true, force: true });
}
