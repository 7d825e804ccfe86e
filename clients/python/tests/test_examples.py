"""examples/welcome_email.py, the example of docs/other-languages.md, run end to end: it enqueues
a welcome mail and a bad address, its worker sends the one and fails the other for good, and it
stops on SIGTERM. The docs must show the file verbatim."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO, Server, eventually, server_env

from faultline_queue import Client

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "welcome_email.py"
DOCS = REPO / "docs" / "other-languages.md"


def test_the_docs_show_the_example_verbatim() -> None:
    assert EXAMPLE.read_text() in DOCS.read_text(), f"{DOCS} must show {EXAMPLE} as it is"


def test_the_welcome_email_example_enqueues_and_works(server: Server, client: Client) -> None:
    env = server_env() | {"FAULTLINE_URL": server.url}
    user = random.randrange(10**9)

    def enqueue(email: str) -> str:
        out = subprocess.run(
            [sys.executable, str(EXAMPLE), "enqueue", str(user if "@" in email else user + 1), email],
            env=env, check=True, capture_output=True, text=True, timeout=30,
        ).stdout
        m = re.search(r"job (\S+) enqueued", out)
        assert m, out
        return m.group(1)

    good = enqueue(f"user{user}@example.com")
    bad = enqueue("not-an-address")
    worker = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "work"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        done = {
            job_id: eventually(
                lambda job_id=job_id: (j := client.get_job(job_id))["state"] in ("succeeded", "failed") and j,
                timeout=30,
                what=f"job {job_id} to finish",
            )
            for job_id in (good, bad)
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    assert (done[good]["state"], done[good]["result"]) == ("succeeded", {"sent_to": f"user{user}@example.com"})
    assert (done[bad]["state"], done[bad]["attempts"]) == ("failed", 1)
    assert "not an email address" in done[bad]["errors"][-1]["error"]
    assert f"welcome mail to user{user}@example.com (attempt 1/8, fencing token" in output, output
