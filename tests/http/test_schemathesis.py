"""schemathesis against the served /openapi.json: no 5xx, and no answer that breaks the schema.

The server has a token, so the document asks for it and schemathesis also checks that
requests without it are refused with 401.
The server runs in its own thread (its own trio loop) because schemathesis calls it with
``requests``, synchronously. The default run keeps few examples per operation (well under
30 s in all); ``-m slow`` runs many more.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
import trio
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation

from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig

pytestmark = [pytest.mark.http]

TOKEN = "schemathesis-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Streams never end: they are tested in test_streams.py.
STREAMS = r"^/api/(events|ws)$"


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server on a real SQLite file, in a thread; yields its HTTP base URL."""
    db = tmp_path_factory.mktemp("schemathesis") / "runq.db"
    srv = Server(ServerConfig(db=str(db), port=0, http_port=0, token=TOKEN, core=CoreConfig(lease_timeout=10.0)))
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(srv.serve)
            box["token"] = trio.lowlevel.current_trio_token()
            ready.set()

    thread = threading.Thread(target=functools.partial(trio.run, main), daemon=True)
    thread.start()
    assert ready.wait(20), "the server did not start"
    yield f"http://127.0.0.1:{srv.http_port}"
    trio.from_thread.run_sync(srv.stopping.set, trio_token=box["token"])
    thread.join(20)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def api_schema(live_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=STREAMS)


def _bounded(case: Any) -> None:
    # a long poll on a live task would wait up to 300 s: any value in the schema is fine, keep it short
    wait = case.query.get("wait") if case.query else None
    if isinstance(wait, (int, float, str)) and not isinstance(wait, bool):
        try:
            seconds = float(wait)
        except ValueError:
            return  # not a number: the case is about bad input, leave it
        if 0.01 < seconds <= 300:
            case.query["wait"] = "0.01" if isinstance(wait, str) else 0.01


def _one_state_filter(case: Any) -> None:
    # ?state= and its alias ?status= with different values are refused (docs/http.md), which OpenAPI 3.0
    # cannot say of two query parameters: keep one
    if case.query and "state" in case.query and "status" in case.query and case.query["state"] != case.query["status"]:
        del case.query["status"]


#: Operations whose valid input JSON Schema cannot say in full: a schedule's cron expression (cronsim's grammar,
#: and whether it ever fires) and its time zone (the system's tz database). Schemathesis' "schema-valid data is
#: accepted" check does not apply to them; every other check does (no 5xx, answers match the schema).
_NOT_ALL_VALID_DATA_ACCEPTED = frozenset({("PUT", "/api/schedules/{name}")})


def _excluded(case: Any) -> list[Any]:
    return [positive_data_acceptance] if (case.method.upper(), case.path) in _NOT_ALL_VALID_DATA_ACCEPTED else []


def _auth(case: Any) -> dict[str, str]:
    """The token, unless schemathesis made the headers invalid on purpose (the token left out, say):
    adding it back would turn a request it expects refused into a valid one."""
    meta = case.meta
    return {} if meta is not None and meta.is_negative_at(ParameterLocation.HEADER) else AUTH

_LABEL = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


def _label_names(case: Any) -> None:
    # a label's name has the rule of its value (docs/routing.md), which OpenAPI 3.0 cannot say of a map's keys
    # (no propertyNames): a schema-valid map of labels gets valid names; a map with a bad value is left alone
    body = case.body if isinstance(case.body, dict) else None
    tasks = body.get("tasks") if body is not None and isinstance(body.get("tasks"), list) else [body]
    for t in tasks:
        req = t.get("requires") if isinstance(t, dict) else None
        if isinstance(req, dict) and all(isinstance(v, str) and _LABEL.fullmatch(v) for v in req.values()):
            t["requires"] = {(k if isinstance(k, str) and _LABEL.fullmatch(k) else f"k{i}"): v
                             for i, (k, v) in enumerate(req.items())}


def _policy_bounds(case: Any) -> None:
    # a retry policy's max may not be below its base (docs/tasks.md), which OpenAPI 3.0 cannot say of two fields:
    # a schema-valid policy gets a max no lower than its base; a bad one is left alone
    body = case.body if isinstance(case.body, dict) else None
    tasks = body.get("tasks") if body is not None and isinstance(body.get("tasks"), list) else [body]
    for t in tasks:
        rp = t.get("retry_policy") if isinstance(t, dict) else None
        if isinstance(rp, dict):
            base, cap = rp.get("base"), rp.get("max")
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (base, cap)) and cap < base:
                rp["max"] = base if base > 0 else cap


@schema.parametrize()
@hypothesis.settings(max_examples=12, deadline=None, suppress_health_check=list(hypothesis.HealthCheck),
                     phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
def test_api_conforms_to_its_openapi(case: Any, live_url: str) -> None:
    _bounded(case)
    _one_state_filter(case)
    _label_names(case)
    _policy_bounds(case)
    case.call_and_validate(base_url=live_url, headers=_auth(case), timeout=10, excluded_checks=_excluded(case))


@pytest.mark.slow
@schema.parametrize()
@hypothesis.settings(max_examples=300, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_api_conforms_to_its_openapi_long(case: Any, live_url: str) -> None:
    _bounded(case)
    _one_state_filter(case)
    _label_names(case)
    _policy_bounds(case)
    case.call_and_validate(base_url=live_url, headers=_auth(case), timeout=10, excluded_checks=_excluded(case))


def test_streams_are_in_the_spec_but_not_fuzzed(live_url: str) -> None:
    import re

    from runq.app.http import SPEC

    assert [p for p in SPEC["paths"] if re.match(STREAMS, p)] == ["/api/events", "/api/ws"]
