// examples/welcome_email.mjs, the example of docs/other-languages.md, run end to end: it enqueues a
// welcome mail and a bad address, its worker sends the one and fails the other for good, and it
// stops on SIGTERM. The docs must show the file verbatim.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { after, before, test } from "node:test";

import type { Job } from "../src/index.js";
import { startServer, waitFor, type TestServer } from "./server.js";

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", ".."); // dist/test -> package
const example = join(packageRoot, "examples", "welcome_email.mjs");
const docs = resolve(packageRoot, "..", "..", "docs", "other-languages.md");

let server: TestServer;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test("the docs show the example verbatim", () => {
  assert.ok(readFileSync(docs, "utf8").includes(readFileSync(example, "utf8")), `${docs} must show ${example} as it is`);
});

test("the welcome-email example enqueues and works", async () => {
  const env = { ...process.env, FAULTLINE_URL: server.baseUrl, FAULTLINE_API_TOKEN: server.token };
  const user = Math.floor(Math.random() * 1e9);
  const enqueue = async (userId: number, email: string) => {
    const { stdout } = await promisify(execFile)(process.execPath, [example, "enqueue", String(userId), email], { env, timeout: 30_000 });
    const id = /job (\S+) enqueued/.exec(stdout)?.[1];
    assert.ok(id, stdout);
    return id;
  };
  const good = await enqueue(user, `user${user}@example.com`);
  const bad = await enqueue(user + 1, "not-an-address");

  const worker = spawn(process.execPath, [example, "work"], { env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  worker.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
  worker.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((r) => worker.once("exit", (code) => r(code)));
  const finished = (id: string) =>
    waitFor(`job ${id} to finish`, async () => {
      const job: Job = await server.client.getJob(id);
      return job.state === "succeeded" || job.state === "failed" ? job : undefined;
    }, 30_000);
  let done: Job[];
  try {
    done = await Promise.all([finished(good), finished(bad)]);
  } finally {
    worker.kill("SIGTERM");
  }
  assert.equal(await exited, 0, output);
  const [sent, refused] = done;
  assert.equal(sent!.state, "succeeded");
  assert.deepEqual(sent!.result, { sent_to: `user${user}@example.com` });
  assert.equal(refused!.state, "failed");
  assert.equal(refused!.attempts, 1);
  assert.match(refused!.errors?.at(-1)?.error ?? "", /not an email address/);
  assert.match(output, new RegExp(`welcome mail to user${user}@example\\.com \\(attempt 1/8, fencing token \\d+\\)`));
});
