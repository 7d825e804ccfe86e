"""A real Faultline server for the whole session, and helpers to wait on it.

The binary is ``$FAULTLINE_BIN`` (default: the repository's ``target/debug/faultline``). With
``$DATABASE_URL`` the session runs ``faultline migrate`` then ``faultline serve``; without it,
``faultline up`` with a private Postgres in a temporary directory (``up`` also runs built-in
workers on its own queue, which no test uses: every test enqueues into a queue of its own).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from faultline_queue import AsyncClient, Client

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
STARTUP_TIMEOUT = 90.0  # a first private cluster runs initdb


@dataclass
class Server:
    url: str
    database_url: str | None
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    """The environment without any FAULTLINE_* setting of the caller's (a stray
    FAULTLINE_API_TOKEN or FAULTLINE_LISTEN would change what the tests talk to)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_")}


def binary() -> str:
    path = os.environ.get("FAULTLINE_BIN") or str(REPO / "target" / "debug" / "faultline")
    if not os.access(path, os.X_OK):
        pytest.exit(
            f"no Faultline binary at {path}: build it (cargo build -p faultline-queue-cli) or set FAULTLINE_BIN",
            returncode=2,
        )
    return path


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"faultline exited with {process.returncode} before it was ready:\n{tail(log)}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"faultline at {url} not ready after {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start(args: list[str], log: Path, url: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=server_env())
    try:
        wait_ready(url, process, log)
    except BaseException:
        stop(process)
        raise
    return process


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    bin_ = binary()
    work = Path(tempfile.mkdtemp(prefix="faultline-py-"))
    # Under root, `up` runs its private Postgres as the postgres user, which must enter this.
    work.chmod(0o755)
    log = work / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database_url = os.environ.get("DATABASE_URL")
    common = ["--listen", f"127.0.0.1:{port}", "--reaper-interval", "200ms"]
    try:
        if database_url:
            subprocess.run([bin_, "migrate"], check=True, env=server_env() | {"DATABASE_URL": database_url})
            process = start([bin_, "serve", "--database-url", database_url, *common], log, url)
        else:
            process = start(
                [bin_, "up", "--data-dir", str(work / "data"), "--queues", "faultline-py-builtin", *common],
                log,
                url,
            )
            database_url = private_database_url(log)
        try:
            yield Server(url, database_url, process, log)
        finally:
            stop(process)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def private_database_url(log: Path) -> str | None:
    """The URL of `up`'s private cluster, from its banner and password file."""
    text = log.read_text(errors="replace")
    m = re.search(r"Postgres\s+(postgres://\S+?):\*\*\*\*@(\S+)\s+\(.*?password in (\S+?)\)", text)
    if not m:
        return None
    try:
        password = Path(m.group(3)).read_text().strip()
    except OSError:
        return None
    user = m.group(1)  # postgres://user
    return f"{user}:{password}@{m.group(2)}"


@pytest.fixture(scope="session")
def token_server(server: Server) -> Iterator[tuple[str, str]]:
    """A second API process on the same database that requires a bearer token."""
    if not server.database_url:
        pytest.skip("the session server's database URL is unknown")
    token = "py-" + uuid.uuid4().hex
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = server.log.with_name("token-server.log")
    process = start(
        [
            binary(),
            "serve",
            "--database-url",
            server.database_url,
            "--listen",
            f"127.0.0.1:{port}",
            "--api-token",
            token,
            "--no-maintenance",
        ],
        log,
        url,
    )
    try:
        yield url, token
    finally:
        stop(process)


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c


@pytest.fixture
async def aclient(server: Server) -> Any:
    async with AsyncClient(server.url) as c:
        yield c


@pytest.fixture
def queue() -> str:
    """A queue of this test's own."""
    return f"py-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(interval)


async def eventually_async(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """``eventually`` for coroutines: ``check`` may return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(interval)
