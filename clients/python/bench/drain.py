#!/usr/bin/env python3
"""Drain rate of ONE Python worker process: how many no-op jobs a second it works.

    clients/python/.venv/bin/python clients/python/bench/drain.py            # 3 runs of 50,000
    python bench/drain.py --bin /tmp/faultline-rel/faultline --runs 5 --jobs 20000
    python bench/drain.py --url http://127.0.0.1:8000                        # a server you run

Without ``--url`` it starts ``faultline up`` (``--bin``, default ``$FAULTLINE_BIN``, else the
repository's target/release/faultline) with a private Postgres in a temporary directory. Each run
enqueues ``--jobs`` jobs of kind ``noop_remote`` on a fresh queue that nothing serves (batches of
1,000), then starts one worker process (this file with ``--work``) whose handler returns at once,
and times from its start until the queue counts every job succeeded (``GET /v1/queues``).

Per run it prints jobs/s, the CPU seconds of the worker process, of the server and of its
Postgres (when it started them), and the HTTP requests the server saw per route (from its
``/metrics``). Last line: the median jobs/s. Needs only the package (``pip install ./clients/python``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def work(args: argparse.Namespace) -> None:
    """The worker process: one Worker, a handler that returns at once."""
    from faultline_queue import Worker

    worker = Worker(
        args.url,
        queues=[args.queue],
        concurrency=args.concurrency,
        poll_wait=1.0,
        grace=5.0,
        batch_completions=not args.no_batch,
    )
    if args.sync_handler:

        @worker.handler("noop_remote")
        def noop(job: object, ctx: object) -> None:
            return None

    else:

        @worker.handler("noop_remote")
        async def noop_async(job: object, ctx: object) -> None:
            return None

    worker.run()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu(pid: int | None) -> tuple[float, float]:
    """(server process CPU, CPU of its descendants: Postgres) in seconds."""
    if pid is None:
        return (0.0, 0.0)
    return cpu_seconds(pid), sum(cpu_seconds(p) for p in descendants(pid))


def request_counts(url: str) -> dict[str, float]:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for m in re.finditer(r'^faultline_http_request_duration_seconds_count\{(.*?)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="(.*?)"', m.group(1)))
        counts[f"{labels.get('method')} {labels.get('route')}"] = float(m.group(2))
    return counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary: str, work_dir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work_dir / "server.log", "ab")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_") and k != "DATABASE_URL"}
    process = subprocess.Popen(
        [binary, "up", "--data-dir", str(work_dir / "data"), "--listen", f"127.0.0.1:{port}",
         "--metrics-listen", f"127.0.0.1:{free_port()}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"faultline exited with {process.returncode}; see {work_dir / 'server.log'}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    sys.exit("faultline was not ready within 120 s")


def one_run(args: argparse.Namespace, url: str, server_pid: int | None) -> float:
    from faultline_queue import Client

    queue = f"drain-{uuid.uuid4().hex[:8]}"
    load = Path("/proc/loadavg").read_text().split()[0]  # other work on the machine skews the figure
    with Client(url, timeout=120) as client:
        for start in range(0, args.jobs, 1000):
            n = min(1000, args.jobs - start)
            client.enqueue_batch([{"kind": "noop_remote", "payload": {"i": start + i}, "queue": queue} for i in range(n)])
        before_requests = request_counts(url)
        server_before, pg_before = tree_cpu(server_pid)
        command = [sys.executable, __file__, "--work", "--url", url, "--queue", queue, "--concurrency", str(args.concurrency)]
        if args.no_batch:
            command.append("--no-batch")
        if args.sync_handler:
            command.append("--sync-handler")
        started = time.monotonic()
        worker = subprocess.Popen(command)
        try:
            while True:
                time.sleep(0.05)
                row = next((q for q in client.list_queues()["queues"] if q["queue"] == queue), None)
                if row and row["succeeded"] >= args.jobs:
                    break
                if worker.poll() is not None:
                    sys.exit(f"the worker exited with {worker.returncode}")
            elapsed = time.monotonic() - started
            worker_cpu = cpu_seconds(worker.pid)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        server_after, pg_after = tree_cpu(server_pid)
        after_requests = request_counts(url)
    rate = args.jobs / elapsed
    requests = {k: v - before_requests.get(k, 0) for k, v in after_requests.items()}
    requests = {k: int(v) for k, v in requests.items() if v >= 1 and "/v1/queues" not in k and "/metrics" not in k}
    total = sum(requests.values())
    print(
        f"{args.jobs} jobs in {elapsed:.2f} s = {rate:,.0f} jobs/s | CPU s: worker {worker_cpu:.2f}, "
        f"server {server_after - server_before:.2f}, postgres {pg_after - pg_before:.2f} | "
        f"{total} requests ({total / args.jobs:.4f}/job): "
        + ", ".join(f"{k} {v}" for k, v in sorted(requests.items()))
        + f" | load before {load}",
        flush=True,
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start `faultline up`)")
    parser.add_argument("--bin", default=os.environ.get("FAULTLINE_BIN") or str(REPO / "target" / "release" / "faultline"))
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2000)
    parser.add_argument("--no-batch", action="store_true", help="one complete per job (batch_completions=False)")
    parser.add_argument("--sync-handler", action="store_true", help="a plain function handler (thread pool) instead of async")
    parser.add_argument("--work", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work:
        work(args)
        return

    work_dir = None
    server = None
    url = args.url
    try:
        if url is None:
            work_dir = Path(tempfile.mkdtemp(prefix="faultline-drain-"))
            work_dir.chmod(0o755)  # `up` under root runs Postgres as the postgres user
            url, server = start_server(args.bin, work_dir)
        handler = "sync (thread pool)" if args.sync_handler else "async"
        print(f"server {url}; {args.runs} runs of {args.jobs} jobs, concurrency {args.concurrency}, "
              f"{handler} handler, batched completions {'off' if args.no_batch else 'on'}", flush=True)
        rates = [one_run(args, url, server.pid if server else None) for _ in range(args.runs)]
        print(f"median {statistics.median(rates):,.0f} jobs/s (runs: {', '.join(f'{r:,.0f}' for r in rates)})")
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
