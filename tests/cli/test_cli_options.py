"""``runq`` options: before or after the command, from environment variables (the documented names), the
command line over the environment and the later over the earlier; ``--version``; ``--help``."""

from __future__ import annotations

import json
import re
import sys
import time
import tomllib
from pathlib import Path

import pytest
from cli_helpers import ROOT, Served, cli_env, run_cli

from runq import SyncClient, __version__
from runq.cli import cli, main

NOWHERE = "127.0.0.1:1"  # nothing listens there: a command that used it would fail


@pytest.fixture(scope="module")
def task_id(served: Served) -> str:
    with SyncClient(served.address) as c:
        tid = c.enqueue("echo", {"x": 1})
        assert c.wait(tid, 10)["state"] == "succeeded"
        c.enqueue("echo", 2, queue="mail")
    return str(tid)


def _status(r: object, task_id: str) -> None:
    assert getattr(r, "returncode", None) == 0, (getattr(r, "stdout", ""), getattr(r, "stderr", ""))
    assert json.loads(r.stdout)["id"] == int(task_id)  # type: ignore[attr-defined]


def test_global_options_before_or_after_the_command(served: Served, task_id: str) -> None:
    a = served.address
    for args in (["--server", a, "status", task_id, "--json"], ["status", task_id, "--json", "--server", a],
                 ["-s", a, "status", "--json", task_id], ["status", "-s", a, task_id, "--json"],
                 ["--log-level", "ERROR", "status", task_id, "--json", "--log-format", "json", "-s", a]):
        _status(run_cli(*args), task_id)


def test_the_command_line_wins_over_the_environment_and_the_later_over_the_earlier(served: Served,
                                                                                   task_id: str) -> None:
    a = served.address
    _status(run_cli("status", task_id, "--json", env=cli_env(RUNQ_SERVER=a)), task_id)
    _status(run_cli("status", task_id, "--json", "--server", a, env=cli_env(RUNQ_SERVER=NOWHERE)), task_id)
    _status(run_cli("--server", a, "status", task_id, "--json", env=cli_env(RUNQ_SERVER=NOWHERE)), task_id)
    _status(run_cli("--server", NOWHERE, "status", task_id, "--json", "--server", a), task_id)
    wrong = run_cli("--server", a, "status", task_id, "--server", NOWHERE)  # (the value given is the one used)
    assert wrong.returncode == 1 and wrong.stderr == f"runq status: [Errno 111] cannot connect to {NOWHERE}: " \
                                                     "Connection refused\n"


@pytest.mark.parametrize("where", ["before", "after", "environment"])
def test_log_options_anywhere(where: str) -> None:
    args = {"before": ["--log-level", "LOUD", "queues"], "after": ["queues", "--log-level", "LOUD"],
            "environment": ["queues"]}[where]
    r = run_cli(*args, "-s", NOWHERE, env=cli_env(RUNQ_LOG_LEVEL="LOUD") if where == "environment" else None)
    assert r.returncode == 2 and "Error: unknown log level 'LOUD'" in r.stderr, r.stderr
    # a command-line value replaces the environment's
    r = run_cli("queues", "--log-level", "INFO", "-s", NOWHERE, env=cli_env(RUNQ_LOG_LEVEL="LOUD"))
    assert r.returncode == 1 and "cannot connect" in r.stderr


def test_every_option_reads_an_environment_variable(served: Served, task_id: str) -> None:
    """Options of one command: RUNQ_<COMMAND>_<OPTION> (click's auto_envvar_prefix), flags included."""
    env = cli_env(RUNQ_SERVER=served.address, RUNQ_TASKS_LIMIT="1", RUNQ_TASKS_JSON="1", RUNQ_ENQUEUE_PRIORITY="7",
                  RUNQ_ENQUEUE_QUEUE="mail", RUNQ_STATUS_JSON="true")
    page = json.loads(run_cli("tasks", env=env).stdout)
    assert len(page["tasks"]) == 1 and page["cursor"] is not None
    r = run_cli("enqueue", "echo", "--payload", "3", env=env)
    assert r.returncode == 0, r.stderr
    task = json.loads(run_cli("status", r.stdout.strip(), env=env).stdout)
    assert (task["priority"], task["queue"], task["payload"]) == (7, "mail", 3)
    # the same names for another command are other variables: nothing leaks from `tasks` to `queues`
    assert run_cli("queues", env=env).stdout.startswith("QUEUE ")


def test_worker_options_from_the_environment_and_a_supervisor_whose_children_are_single_workers(
        served: Served, tmp_path: Path) -> None:
    """RUNQ_WORKER_PROCESSES=2 RUNQ_WORKER_CONCURRENCY=3: a supervisor of 2 workers of concurrency 3 (its
    children must not read RUNQ_WORKER_PROCESSES again and become supervisors of 2 more each)."""
    import subprocess

    env = cli_env(RUNQ_SERVER=served.address, RUNQ_WORKER_PROCESSES="2", RUNQ_WORKER_CONCURRENCY="3",
                  RUNQ_WORKER_QUEUES="envq")
    log = open(tmp_path / "sup.log", "wb")  # noqa: SIM115 - closed below
    p = subprocess.Popen([sys.executable, "-m", "runq.cli", "worker", "cli_tasks:worker"], env=env,
                         cwd=Path(__file__).parent, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    try:
        with SyncClient(served.address) as c:
            deadline = time.monotonic() + 30
            while len(mine := [w for w in c.workers() if w["queues"] == ["envq"]]) < 2:
                assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "sup.log").read_text()
                time.sleep(0.05)
            time.sleep(0.5)  # (grandchildren, had there been any, would have joined by now)
            mine = [w for w in c.workers() if w["queues"] == ["envq"]]
            assert len(mine) == 2 and {w["concurrency"] for w in mine} == {3}, mine
            assert p.pid not in {w["pid"] for w in mine}  # the supervisor itself is not a worker
    finally:
        p.terminate()
        assert p.wait(30) == 0, (tmp_path / "sup.log").read_text()


def test_version() -> None:
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for args in (["--version"], ["-V"]):
        r = run_cli(*args)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"runq {expected}\n", "")
    assert __version__ == expected
    # RUNQ_VERSION (a deployment's own variable, say) is not read as --version
    r = run_cli("queues", "-s", NOWHERE, env=cli_env(RUNQ_VERSION="1"))
    assert r.returncode == 1 and r.stdout == ""


def test_help_names_each_options_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--help"]) == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for name in ("RUNQ_SERVER", "RUNQ_TOKEN", "RUNQ_WORKER_CONCURRENCY", "RUNQ_WORKER_PROCESSES",
                 "RUNQ_WORKER_RELOAD_DIR", "RUNQ_LOG_LEVEL", "RUNQ_LOG_FORMAT", "RUNQ_LOG_CONFIG"):
        assert f"env var: {name}" in text, name
    assert main(["serve", "-h"]) == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for name in ("RUNQ_DB", "RUNQ_HTTP_PORT", "RUNQ_TOKEN", "RUNQ_SERVE_PORT", "RUNQ_SERVE_HOST"):
        assert f"env var: {name}" in text, name
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.split("Commands:\n")[1].splitlines() if line.startswith("  ")
            and not line.startswith("   ")] == list(cli.commands)


def _environment_table() -> dict[tuple[str, str], str]:
    """docs/cli.md's table of every option: (command, option) -> environment variable."""
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text.split("<!-- options -->")[1].split("<!-- /options -->")[0]
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].startswith("`--"):
            option = cells[1].split("`")[1]
            for where in cells[0].split(","):
                out[(where.strip(), option)] = cells[2].strip("`").replace("<COMMAND>", where.strip().upper())
    return out


GLOBAL = {"--server", "--token", "--tls", "--tls-ca", "--log-level", "--log-format", "--log-config"}


def test_docs_name_the_environment_variable_of_every_option() -> None:
    """docs/cli.md's table against what click reads: every option of the group and of every command; the
    global options are also on every command (docs: --server but on serve, demo and migrate, --token but on demo
    and migrate),
    with the same variable."""
    import click

    documented = _environment_table()
    actual = {}
    accepted: dict[str, set[str]] = {name: set() for name in GLOBAL}
    for name, command in [("runq", cli), *cli.commands.items()]:
        for param in command.params:
            if not isinstance(param, click.Option) or param.name in ("help", "version"):
                continue
            option = max(param.opts, key=len)
            env = param.envvar if isinstance(param.envvar, str) else f"RUNQ_{name}_{param.name}".upper()
            if name != "runq" and option in GLOBAL:
                accepted[option].add(name)
                assert env == documented[("runq", option)], (name, option)
                continue
            actual[(name, option)] = env
    assert documented == actual
    commands = set(cli.commands)
    assert accepted == {"--log-level": commands, "--log-format": commands, "--log-config": commands,
                        # (users and tokens work on the database, never through a server: docs/security.md;
                        # migrate too)
                        "--server": commands - {"serve", "demo", "migrate", "users", "tokens"},
                        "--token": commands - {"demo", "migrate", "users", "tokens", "login", "logout"},
                        "--tls": commands - {"serve", "demo", "migrate", "users", "tokens"},
                        "--tls-ca": commands - {"serve", "demo", "migrate", "users", "tokens"}}
