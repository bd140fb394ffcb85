"""docs/protocol.md is normative: its tables must say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import pytest

from runq.app.core.model import EVENT_COLUMNS, TASK_COLUMNS, Task, WorkerInfo
from runq.app.core.states import Transition
from runq.app.server import ServerConfig
from runq.protocol.errors import ERROR_CODES
from runq.protocol.frames import DEFAULT_MAX_FRAME, encode_frame
from runq.protocol.messages import CLIENT_OPS, WATCHER_OPS, WORKER_OPS, Hello

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def section(heading: str) -> str:
    """The text under the heading that starts with ``heading``, up to the next heading."""
    m = re.search(rf"^#+ {re.escape(heading)}.*?$(.*?)(?=^#)", DOC + "\n#", re.MULTILINE | re.DOTALL)
    assert m, f"no section {heading!r} in docs/protocol.md"
    return m.group(1)


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text``: rows (header and rule excluded) of cells."""
    out: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = []  # header row
                out.append(current)
            elif not set("".join(cells)) <= set("-: "):
                current.append(cells)
        else:
            current = None
    return out


def names(cell: str) -> list[str]:
    """The backquoted names in a cell."""
    return re.findall(r"`([^`]+)`", cell)


def first_column(table: list[list[str]]) -> list[str]:
    return [n for row in table for n in names(row[0])]


def test_the_example_frame_is_byte_exact() -> None:
    block = DOC.split("is 35 bytes:\n\n```\n", 1)[1].split("```", 1)[0]
    hex_bytes = ""
    for line in block.splitlines():
        for token in line.split():
            if not re.fullmatch(r"[0-9a-f]{2}", token):
                break  # the rest of the line is the comment
            hex_bytes += token
    frame = encode_frame({"op": "hello", "version": 1, "role": "client"})
    assert bytes.fromhex(hex_bytes) == frame and len(frame) == 35


def test_the_payload_example() -> None:
    assert msgpack.packb({"n": 1}).hex(" ") == "81 a1 6e 01" and msgpack.packb(None) == b"\xc0"
    assert "`81 a1 6e 01`" in section("2. Application values")


def test_defaults_named_in_the_spec() -> None:
    cfg = ServerConfig()
    assert DEFAULT_MAX_FRAME == cfg.max_frame == 16_777_216 and "16,777,216" in DOC
    assert cfg.hello_timeout == 5.0 and "(5 s by default)" in DOC
    assert cfg.core.lease_timeout == 10.0 and "(10 by default)" in DOC
    assert cfg.port == 7700 and "Default port 7700" in DOC
    assert cfg.subscriber_backlog == 4 << 20 and "(4 MiB by default)" in DOC
    assert cfg.core.default_timeout == 600.0 and "server default (600)" in DOC
    assert cfg.core.default_retries == 3 and "server default (3)" in DOC


def test_roles_and_their_ops() -> None:
    (table,) = tables(section("3.4 Roles"))
    by_role = {names(row[0])[0]: set(names(row[1])) for row in table}
    assert by_role == {"client": set(CLIENT_OPS), "watcher": set(WATCHER_OPS), "worker": set(WORKER_OPS)}


def test_every_client_request_is_specified() -> None:
    table = tables(section("5. Client requests"))[0]
    assert set(first_column(table)) == set(CLIENT_OPS)


def test_every_worker_message_is_specified() -> None:
    (table,) = tables(section("6.1 Worker to server"))
    assert set(first_column(table)) == set(WORKER_OPS)


def test_hello_fields() -> None:
    (table,) = tables(section("3.1 hello"))
    fields = set(first_column(table))
    assert fields == {"op", "versions"} | set(Hello.__dataclass_fields__)


def test_task_map_fields() -> None:
    (table,) = tables(section("8.1 Task map"))
    assert first_column(table) == list(TASK_COLUMNS)


def test_event_map_fields_and_kinds() -> None:
    fields, kinds = tables(section("8.2 Event map"))
    assert first_column(fields) == list(EVENT_COLUMNS)
    assert set(first_column(kinds)) == {t.value for t in Transition} | {"late_result", "progress", "coalesced",
                                                                          "reclaimed"}


def test_worker_map_fields() -> None:
    (table,) = tables(section("8.4 Worker map"))
    w = WorkerInfo("w1", ("default",), 1, None, None, None, 0.0, 0.0)
    assert first_column(table) == list(w.as_dict())


def test_task_entry_fields() -> None:
    table = tables(section("6.2 Server to worker"))[1]
    from runq.app.core import Core
    from runq.protocol.messages import TaskSpec

    core = Core()
    core.enqueue([TaskSpec("t")], 0.0)
    core.worker_joined("w", 0.0)
    core.credit("w", 1, 0.0)
    (msg,) = core.take_effects(0.0).outbox["w"]
    assert msg["op"] == "tasks" and first_column(table)[:-1] == list(msg["tasks"][0])
    assert set(Task.__slots__) >= set(msg["tasks"][0])
    # a task of a batched type also names its batch (the table's last row)
    from runq.protocol.messages import TypeOptions

    core.worker_joined("b", 0.0, types=("bt",), type_options={"bt": TypeOptions(batch_size=1, batch_wait=0.0)})
    core.enqueue([TaskSpec("bt")], 0.0)
    core.credit("b", 1, 0.0)
    (msg,) = core.take_effects(0.0).outbox["b"]
    assert first_column(table) == list(msg["tasks"][0])


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_error_code_is_in_the_table(code: str) -> None:
    (table,) = tables(section("9. Errors"))
    assert code in first_column(table)


def test_the_error_table_has_no_unknown_code() -> None:
    (table,) = tables(section("9. Errors"))
    assert set(first_column(table)) == set(ERROR_CODES)


def test_which_errors_keep_the_connection() -> None:
    from runq.app.server import tcp

    (table,) = tables(section("9. Errors"))
    open_codes = {names(row[0])[0] for row in table if row[2] == "stays open"}
    assert open_codes == set(tcp._REQUEST_ERRORS)
