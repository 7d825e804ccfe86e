"""Schemathesis hooks for scripts/check-openapi (loaded through SCHEMATHESIS_HOOKS).

The document states every rule JSON Schema can state. A few rules cannot be stated in it: they
depend on the server's data or relate two values, and each is written in the document's
description of the field instead. Schemathesis cannot know them, so its *positive* cases (data it
expects the server to accept) would break them by chance and be refused, rightly. The hooks below
repair exactly those rules in positive cases, and nothing else; negative cases are sent as
generated. Each repair names the rule it keeps:

- `depends_on`: a job id must name an existing job (422 otherwise, SPEC "Dependencies"); in a
  batch an index must name an *earlier* job of the batch that gets created. Ids become the id of
  a real job made for this run; an index that is not earlier, or names a job with an idempotency
  or uniqueness key (an earlier request may hold it, and then that job is not created), becomes
  that id.
- `created_after` must be before `created_before` (GET /v1/jobs, POST /v1/jobs/bulk filter).
- `Idempotency-Key` header and body `idempotency_key` must agree when both are given.
- `cron` must be a cron that parses and matches a real date (`0 0 30 2 *` never does): a
  positive case gets a known-good cron instead.
- JSON integers are written without a fraction (`63`, not `63.0`): Schemathesis spells whole
  numbers as floats on purpose (JSON Schema counts `63.0` as an integer); the server reads them
  with serde, which refuses a float for an integer field. Stated in the document's description;
  here whole floats become integers again, outside `payload` and `result` (any JSON, kept as sent).

And one bound on time: POST /v1/claims long-polls. With `wait_ms` up to 60,000 and no eligible
job in the generated queues, each request would hold a worker for up to a minute. A *valid*
`wait_ms` (0 to 60,000) is lowered to at most 50 ms, which keeps it valid; an invalid one is sent
as generated.
"""

from __future__ import annotations

import datetime
import json
import os
import urllib.request

import schemathesis
from schemathesis.generation.modes import GenerationMode

CLAIM_WAIT_MAX_MS = 50
GOOD_CRONS = ["*/5 * * * *", "0 3 * * 1-5", "*/10 * * * * *", "15 14 1 * *", "@hourly"]
# Kept as sent by the server: a whole float there is data, not a number field.
OPAQUE = {"payload", "result"}

_parent: list[str] = []


def _parent_id() -> str:
    """The id of a real job for dependencies to name, enqueued once per run."""
    if not _parent:
        url = os.environ["CHECK_OPENAPI_URL"].rstrip("/") + "/v1/jobs"
        body = json.dumps({"kind": "check-openapi.parent", "queue": os.environ.get("CHECK_OPENAPI_IDLE_QUEUE", "check-openapi-idle")})
        request = urllib.request.Request(
            url, data=body.encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            _parent.append(json.load(response)["id"])
    return _parent[0]


def _positive(case) -> bool:
    meta = getattr(case, "meta", None)
    return meta is None or meta.generation.mode == GenerationMode.POSITIVE


def _whole_ints(value, key=None):
    if key in OPAQUE:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_ints(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_ints(v) for v in value]
    return value


def _time(value):
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None


def _ordered_range(container) -> None:
    """Drop `created_before` when it is not after `created_after`."""
    if not isinstance(container, dict):
        return
    after, before = _time(container.get("created_after")), _time(container.get("created_before"))
    if after is not None and before is not None:
        try:
            if after >= before:
                container.pop("created_before")
        except TypeError:  # naive against aware: not a pair the server reads either
            pass


def _keyed(job) -> bool:
    """Whether an earlier request may already hold this job's idempotency or uniqueness key."""
    if not isinstance(job, dict):
        return True
    return any(job.get(k) is not None for k in ("idempotency_key", "unique_key", "unique_scope"))


def _dependencies(job, index, batch=None) -> None:
    """Point `depends_on` at jobs that exist (index `None`: a single enqueue). An index naming a
    job of the batch that has an idempotency key is replaced too: if that key is already held by
    another request, the job is not created and the index names nothing (422)."""
    if not isinstance(job, dict) or not isinstance(job.get("depends_on"), list):
        return
    fixed = []
    for dependency in job["depends_on"]:
        if isinstance(dependency, str):
            fixed.append(_parent_id())
        elif isinstance(dependency, int) and not isinstance(dependency, bool):
            earlier = index is not None and 0 <= dependency < index
            keyed = earlier and _keyed(batch[dependency])
            fixed.append(dependency if earlier and not keyed else _parent_id())
        else:
            fixed.append(dependency)
    job["depends_on"] = fixed


@schemathesis.hook
def map_case(context, case):
    operation = context.operation
    if operation is None:
        return case
    method, path = operation.method.upper(), operation.path
    if isinstance(case.body, (dict, list)):
        case.body = _whole_ints(case.body)
    body = case.body

    if method == "POST" and path == "/v1/claims" and isinstance(body, dict):
        wait = body.get("wait_ms")
        if isinstance(wait, int) and not isinstance(wait, bool) and 0 <= wait <= 60_000:
            body["wait_ms"] = min(wait, CLAIM_WAIT_MAX_MS)

    if not _positive(case):
        return case

    if method == "POST" and path == "/v1/jobs" and isinstance(body, dict):
        _dependencies(body, None)
        headers = case.headers or {}
        for name in [h for h in headers if h.lower() == "idempotency-key"]:
            if body.get("idempotency_key") is not None and headers[name] != body["idempotency_key"]:
                del headers[name]
    elif method == "POST" and path == "/v1/jobs/batch" and isinstance(body, dict):
        if isinstance(body.get("jobs"), list):
            for i, job in enumerate(body["jobs"]):
                _dependencies(job, i, body["jobs"])
    elif method == "POST" and path == "/v1/jobs/bulk" and isinstance(body, dict):
        _ordered_range(body.get("filter"))
    elif method == "GET" and path == "/v1/jobs" and isinstance(case.query, dict):
        _ordered_range(case.query)
    elif method == "PUT" and path == "/v1/schedules/{name}" and isinstance(body, dict):
        if isinstance(body.get("cron"), str) and body["cron"] not in GOOD_CRONS:
            body["cron"] = GOOD_CRONS[sum(map(ord, body["cron"])) % len(GOOD_CRONS)]
    return case
