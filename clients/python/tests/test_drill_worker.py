"""drill/worker.py, the Python worker of the Rust failure drills: it serves the binary's built-in
kinds (noop, sleep, fail) with their semantics, logs a line per job start and end, and stops
gracefully on SIGTERM (exit 0, the unfinished job handed back)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import Server, eventually, server_env

from faultline_queue import Client

DRILL_WORKER = Path(__file__).resolve().parent.parent / "drill" / "worker.py"


def test_the_drill_worker_serves_the_builtin_kinds_and_stops_on_sigterm(server: Server, client: Client, queue: str) -> None:
    jobs = {
        "noop": client.enqueue("noop", {"any": "thing"}, queue=queue).id,
        "sleep": client.enqueue("sleep", {"ms": 300}, queue=queue).id,
        "fail": client.enqueue("fail", {"times": 1, "message": "boom"}, queue=queue).id,
        "fail-default": client.enqueue("fail", {"times": 1}, queue=queue, max_attempts=1).id,
        "bad": client.enqueue("sleep", {"ms": "soon"}, queue=queue).id,
    }
    worker_id = f"py-drill-{queue}"
    env = server_env() | {"FAULTLINE_CONCURRENCY": "4"}  # a flag's value may come from the environment
    process = subprocess.Popen(
        [sys.executable, str(DRILL_WORKER), "--url", server.url, "--queues", f"{queue},{queue}-other",
         "--worker-id", worker_id, "--lease-ttl-ms", "3000", "--grace-ms", "300", "--poll-wait-ms", "500"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        done = {
            name: eventually(
                lambda job_id=job_id: (j := client.get_job(job_id))["state"] in ("succeeded", "failed") and j,
                timeout=20, what=f"{name} job to finish",
            )
            for name, job_id in jobs.items()
        }
        # A long sleep is running when SIGTERM comes: after the grace it is handed back.
        long = client.enqueue("sleep", {"ms": 60_000}, queue=queue).id
        eventually(lambda: client.get_job(long)["state"] == "running", timeout=10, what="the long sleep to start")
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert took < 5, took
    assert (done["noop"]["state"], done["noop"]["attempts"], done["noop"].get("result")) == ("succeeded", 1, None)
    assert (done["sleep"]["state"], done["sleep"]["attempts"]) == ("succeeded", 1)
    assert (done["fail"]["state"], done["fail"]["attempts"]) == ("succeeded", 2)
    assert done["fail"]["errors"][0]["error"] == "boom"
    assert done["fail-default"]["state"] == "failed"
    assert done["fail-default"]["errors"][0]["error"] == "failing on purpose: attempt 1 of the first 1 that fail"
    assert (done["bad"]["state"], done["bad"]["attempts"]) == ("failed", 1)
    assert "invalid payload for kind sleep" in done["bad"]["errors"][0]["error"]
    handed_back = client.get_job(long)
    assert (handed_back["state"], handed_back["attempts"]) == ("queued", 0), handed_back
    client.cancel(long)

    lines = stderr.splitlines()
    assert any(line.startswith(f"faultline-py-worker ready worker={worker_id} ") and "concurrency=4" in line for line in lines), stderr
    for name, job_id in jobs.items():
        starts = [line for line in lines if re.match(rf"faultline-py-worker start worker={worker_id} job={job_id} kind=\w+ token=\d+ attempt=\d+$", line)]
        ends = [line for line in lines if re.match(rf"faultline-py-worker end worker={worker_id} job={job_id} kind=\w+ token=\d+ attempt=\d+ outcome=\w+ ms=\d+", line)]
        assert len(starts) == len(ends) == done[name]["attempts"], (name, stderr)
    fail_ends = [line for line in lines if f"job={jobs['fail']} " in line and " end " in f" {line}"]
    assert "outcome=retryable" in fail_ends[0] and 'error="boom"' in fail_ends[0] and "outcome=ok" in fail_ends[1], fail_ends
    assert any(f"job={long} " in line and "outcome=stopped" in line and "reason=shutdown" in line for line in lines), stderr
    assert lines[-1] == f"faultline-py-worker exit worker={worker_id} status=0", stderr
