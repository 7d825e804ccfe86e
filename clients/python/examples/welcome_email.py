"""The welcome-email job of the Rust README, from Python: enqueue it, and work it.

    python welcome_email.py enqueue 42 ada@example.com   # enqueue a welcome.send job
    python welcome_email.py work                         # work the `mail` queue until Ctrl-C

The server is $FAULTLINE_URL (default http://127.0.0.1:8000), with $FAULTLINE_API_TOKEN when it
requires a token.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from faultline_queue import Client, JobContext, Permanent, Retryable, Worker

URL = os.environ.get("FAULTLINE_URL", "http://127.0.0.1:8000")
TOKEN = os.environ.get("FAULTLINE_API_TOKEN")  # None: no token


def enqueue(user_id: int, email: str) -> None:
    with Client(URL, token=TOKEN) as client:
        sent = client.enqueue(
            "welcome.send",
            {"user_id": user_id, "email": email},
            queue="mail",
            max_attempts=8,
            timeout_ms=30_000,
            idempotency_key=f"welcome-{user_id}",  # a retried request makes no second job
        )
        print(f"job {sent.id} {'enqueued' if sent.created else 'was already enqueued'}")


class MailServerBusy(Exception):
    """What your mail library raises on a temporary failure (a 4xx reply, a timeout)."""


def send_mail(to: str, subject: str, idempotency_key: str) -> None:
    """Stands in for your mail provider's client."""
    print(f"sent {subject!r} to {to} (idempotency key {idempotency_key})", flush=True)


worker = Worker(URL, queues=["mail"], concurrency=10, lease_ttl=30, token=TOKEN)


@worker.handler("welcome.send")
def send_welcome(job: dict[str, Any], ctx: JobContext) -> Any:
    email = job["payload"].get("email", "")
    if "@" not in email:
        raise Permanent(f"not an email address: {email!r}")  # no retry can fix this one
    print(
        f"welcome mail to {email} (attempt {ctx.attempt}/{ctx.max_attempts}, "
        f"fencing token {ctx.lease_token})",
        flush=True,
    )
    try:
        # One key per job: the provider drops a second send of it (a retry after a crash).
        send_mail(email, "Welcome!", idempotency_key=f"welcome-{ctx.job_id}")
    except MailServerBusy as e:
        raise Retryable(f"mail server busy: {e}", after=60)  # the next attempt in a minute
    return {"sent_to": email}  # the job's result


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "enqueue":
        enqueue(int(args[1]), args[2])
    elif args == ["work"]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not every request
        worker.run()  # until SIGTERM/SIGINT: running jobs finish, or are handed back
    else:
        sys.exit(__doc__)
