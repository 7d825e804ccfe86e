// The welcome-email job of the Rust README, from Node: enqueue it, and work it.
//
//   node welcome_email.mjs enqueue 42 ada@example.com   # enqueue a welcome.send job
//   node welcome_email.mjs work                         # work the `mail` queue until Ctrl-C
//
// The server is $FAULTLINE_URL (default http://127.0.0.1:8000), with $FAULTLINE_API_TOKEN when it
// requires a token.
import { Client, PermanentError, RetryableError, Worker } from "faultline-queue";

const baseUrl = process.env.FAULTLINE_URL ?? "http://127.0.0.1:8000";
const token = process.env.FAULTLINE_API_TOKEN; // undefined: no token

async function enqueue(userId, email) {
  const client = new Client({ baseUrl, token });
  const { job, created } = await client.enqueue(
    "welcome.send",
    { user_id: userId, email },
    { queue: "mail", maxAttempts: 8, timeoutMs: 30_000, idempotencyKey: `welcome-${userId}` }, // a retried request makes no second job
  );
  console.log(`job ${job.id} ${created ? "enqueued" : "was already enqueued"}`);
}

/** What your mail library throws on a temporary failure (a 4xx reply, a timeout). */
class MailServerBusy extends Error {}

/** Stands in for your mail provider's client. */
async function sendMail(to, subject, { idempotencyKey, signal }) {
  signal.throwIfAborted();
  console.log(`sent ${JSON.stringify(subject)} to ${to} (idempotency key ${idempotencyKey})`);
}

function work() {
  const worker = new Worker({ baseUrl, token, queues: ["mail"], concurrency: 10, leaseTtlMs: 30_000 });
  worker.handle("welcome.send", async (job, ctx) => {
    const { email } = job.payload;
    if (typeof email !== "string" || !email.includes("@")) {
      throw new PermanentError(`not an email address: ${JSON.stringify(email)}`); // no retry can fix this one
    }
    console.log(`welcome mail to ${email} (attempt ${ctx.attempt}/${ctx.maxAttempts}, fencing token ${ctx.leaseToken})`);
    try {
      // One key per job: the provider drops a second send of it (a retry after a crash). The
      // signal aborts the send when the lease is lost, the job cancelled or the worker stopping.
      await sendMail(email, "Welcome!", { idempotencyKey: `welcome-${ctx.jobId}`, signal: ctx.signal });
    } catch (error) {
      if (error instanceof MailServerBusy) throw new RetryableError(`mail server busy: ${error.message}`, { afterMs: 60_000 });
      throw error;
    }
    return { sent_to: email }; // the job's result
  });
  worker.installSignalHandlers(); // SIGTERM/SIGINT: running jobs finish, or are handed back
  return worker.run();
}

const [command, ...rest] = process.argv.slice(2);
if (command === "enqueue" && rest.length === 2) {
  await enqueue(Number(rest[0]), rest[1]);
} else if (command === "work" && rest.length === 0) {
  await work();
} else {
  console.error("usage: node welcome_email.mjs enqueue <user id> <email> | work");
  process.exit(2);
}
