"""``runq schedules`` (list, next fire in human time, --json) and ``add``, ``pause``, ``resume``, ``rm``, ``run``
against a real ``runq serve`` process (issue 11)."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
from cli_helpers import Served, run_cli

from runq import SyncClient
from runq.cli import main
from runq.cli.schedules import parse_every


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("5m", 300), ("5min", 300), ("2h", 7200),
                                               ("1d", 86400), ("1.5m", 90)])
def test_intervals(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5 weeks", "-5s", "1e3"])
def test_bad_intervals(text: str) -> None:
    with pytest.raises(ValueError, match="is not an interval"):
        parse_every(text)


def test_add_list_pause_resume_run_rm(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    s = ("--server", served.address)
    rc, out, err = run(capsys, "schedules", "add", "standup", "echo", "--cron", "0 9 * * MON-FRI", "--tz",
                       "Europe/Berlin", "--payload", '{"word": "hi"}', *s)
    assert (rc, err) == (0, "")
    m = re.fullmatch(r"schedule standup added \(0 9 \* \* MON-FRI Europe/Berlin\): next fire "
                     r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \(in .+\)\n", out)
    assert m is not None, out
    with SyncClient(served.address) as c:
        (kept,) = c.schedules()
    assert m.group(1) == datetime.fromtimestamp(kept["next_fire"]).isoformat(sep=" ", timespec="seconds")
    assert kept["payload"] == {"word": "hi"}

    rc, out, _ = run(capsys, "schedules", "add", "beat", "echo", "--every", "5m", "--missed", "once", "--json", *s)
    added = json.loads(out)
    assert rc == 0 and (added["every"], added["missed"], added["payload"]) == (300.0, "once", None)

    rc, out, _ = run(capsys, "schedules", *s)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["NAME", "TYPE", "WHEN", "NEXT", "FIRE", "LAST", "FIRE", "MISSED"]
    assert lines[1].split()[:4] == ["beat", "echo", "every", "5"] and re.search(r"\(in (5 min|4 min 5\d s)\)", lines[1])
    assert lines[2].split()[:8] == ["standup", "echo", "0", "9", "*", "*", "MON-FRI", "Europe/Berlin"]
    rc, out, _ = run(capsys, "schedules", "--json", *s)
    with SyncClient(served.address) as c:
        assert json.loads(out) == json.loads(json.dumps(c.schedules()))

    assert run(capsys, "schedules", "pause", "standup", *s)[:2] == (0, "schedule standup paused\n")
    rc, out, _ = run(capsys, "schedules", *s)
    assert "paused" in out.splitlines()[2]
    rc, out, _ = run(capsys, "schedules", "resume", "standup", *s)
    assert rc == 0 and out.startswith("schedule standup resumed: next fire ")
    rc, out, _ = run(capsys, "schedules", "run", "standup", *s)
    tid = int(re.fullmatch(r"schedule standup ran: task (\d+) enqueued\n", out).group(1))  # type: ignore[union-attr]
    with SyncClient(served.address) as c:
        ran = c.get(tid)
    assert (ran["type"], ran["payload"]) == ("echo", {"word": "hi"})
    assert run(capsys, "schedules", "rm", "standup", *s)[:2] == (0, "schedule standup removed\n")
    assert run(capsys, "schedules", "rm", "beat", *s)[0] == 0
    rc, out, err = run(capsys, "schedules", "rm", "standup", *s)
    assert (rc, out, err) == (1, "", "runq rm: not_found: no schedule 'standup'\n")
    rc, out, err = run(capsys, "schedules", *s)
    assert rc == 0 and "no schedules" in err


@pytest.mark.parametrize(("args", "rc", "message"), [
    (["add", "x", "echo", "--cron", "0 9 * *"], 1, "bad cron expression '0 9 * *'"),
    (["add", "x", "echo", "--cron", "0 9 * * *", "--tz", "Moon/Base"], 1, "unknown time zone 'Moon/Base'"),
    (["add", "x", "echo", "--every", "0.5"], 1, "'every' must be from 1 to"),
    (["add", "x", "echo"], 2, "give exactly one of --cron and --every"),
    (["add", "x", "echo", "--every", "soon"], 2, "'soon' is not an interval"),
    (["add", "x", "echo", "--every", "5", "--payload", "{nope"], 2, "not JSON"),
])
def test_bad_input_is_one_clear_line(served: Served, args: list[str], rc: int, message: str) -> None:
    got = run_cli("schedules", *args, "--server", served.address)
    assert got.returncode == rc and message in got.stderr, got.stderr
    with SyncClient(served.address) as c:
        assert all(s["name"] != "x" for s in c.schedules())


def test_the_help_lists_the_subcommands() -> None:
    got = run_cli("schedules", "--help")
    assert got.returncode == 0
    assert [ln.split()[0] for ln in got.stdout.split("Commands:")[1].strip().splitlines()] == \
        ["add", "pause", "resume", "rm", "run"]

