"""The dashboard as a user, a viewer and an admin (issue 13, docs/security.md): it shows who it is connected
as, offers only the actions the identity may take, and a user's dashboard lists and follows that user's tasks
only (the server's rules: a real ``runq serve`` subprocess, API tokens made beforehand)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from test_live import SIZE, banner, table_rows, until
from test_offline import WRITES, offered_per_screen
from textual.widgets import Static
from tui_helpers import Procs

from runq.app.auth import new_token, token_hash
from runq.app.store.principals import TokenRecord, UserRecord, open_principals
from runq.protocol.client import Client
from runq.tui import LiveSource, RunqDashboard

pytestmark = [pytest.mark.tui, pytest.mark.anyio]


def _tokens(db: str) -> dict[str, str]:
    ps = open_principals(db)
    ps.add_user(UserRecord("alice", "user", "x", False, 0.0, 0.0))
    out = {}
    for name, role, user in (("alice", "user", "alice"), ("viewer", "viewer", None), ("admin", "admin", None)):
        secret, tid = new_token()
        ps.add_token(TokenRecord(tid, token_hash(secret), name, role, user, None, None, None, 0.0))
        out[name] = secret
    ps.close()
    return out


async def test_the_dashboard_offers_what_the_identity_may_do_and_shows_a_users_own_tasks(procs: Procs,
                                                                                         tmp_path: Path) -> None:
    tokens = _tokens(procs.db)
    procs.start_server()
    with anyio.fail_after(90):
        async with Client(procs.address, token=tokens["admin"]) as admin, \
                Client(procs.address, token=tokens["alice"]) as alice:
            theirs = await admin.enqueue("noop", 1)
            mine = await alice.enqueue("noop", 2)
            await admin.pause("elsewhere")  # (an operator's action: in the audit log)
        expected = {
            "alice": {"queues": {"enqueue"}, "workers": set(), "tasks": {"cancel_task", "retry_task", "enqueue"},
                      "detail": {"cancel_task", "retry_task"}},
            "viewer": {"queues": set(), "workers": set(), "tasks": set(), "detail": set()},
            "admin": {"queues": {"toggle_pause", "enqueue"}, "workers": {"drain"},
                      "tasks": {"cancel_task", "retry_task", "enqueue"}, "detail": {"cancel_task", "retry_task"}},
        }
        for who, role in (("alice", "user"), ("viewer", "viewer"), ("admin", "admin")):
            await _check(procs.address, tokens, who, role, mine, theirs, expected[who])


async def _check(address: str, tokens: dict[str, str], who: str, role: str, mine: int, theirs: int,
                 expected: dict[str, set[str]]) -> None:
    app = RunqDashboard(LiveSource(address, token=tokens[who]))
    async with app.run_test(size=SIZE) as pilot:
        source = app.source
        assert isinstance(source, LiveSource)
        await until(pilot, lambda: source.state.connected, what="connected")
        assert source.state.identity == (f"alice ({role})" if who == "alice" else f"token:{tokens[who][3:11]} ({role})")
        await pilot.press("3")
        want = 1 if who == "alice" else 2
        await until(pilot, lambda: len(table_rows(app, "#tasks")) >= want, what="the tasks listed")
        ids = {int(r[0]) for r in table_rows(app, "#tasks")}
        assert ids == ({mine} if who == "alice" else {mine, theirs}), who
        shown = await offered_per_screen(app, pilot, mine)
        assert {n: a & WRITES for n, a in shown.items()} == expected, who
        assert "reconnecting" not in banner(app)  # (a user's polls skip what it may not read)
        await pilot.press("escape", "7")  # the audit log
        if who == "alice":
            await until(pilot, lambda: "admins and viewers" in str(app.screen.query_one("#summary", Static).content),
                        what="the audit log refused")
            assert table_rows(app, "#audit") == []
        else:
            await until(pilot, lambda: table_rows(app, "#audit"), what="the audit log")
            [row] = table_rows(app, "#audit")
            assert row[2:5] == [f"token:{tokens['admin'][3:11]}", "queue_paused", "queue:elsewhere"]


async def test_the_offline_dashboard_reads_the_files_audit_log(tmp_path: Path) -> None:
    from runq.tui.offline import OfflineSource

    db = str(tmp_path / "runq.db")
    ps = open_principals(db)
    ps.audit(1_800_000_000.0, "token_revoked", "token 1a2b3c4d", "cli:ops")
    ps.close()
    source = OfflineSource(db)
    await source.start()
    try:
        [e] = await source.server_events()
        assert (e["at"], e["scope"], e["kind"], e["detail"], e["actor"]) == (
            1_800_000_000.0, "auth", "token_revoked", "token 1a2b3c4d", "cli:ops")
    finally:
        await source.close()
