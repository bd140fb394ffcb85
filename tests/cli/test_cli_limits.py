"""``runq limits``, ``runq breakers`` and ``runq why`` (issue 11): real ``runq`` processes against a real
``runq serve`` with a real worker (the ``served`` fixture)."""

from __future__ import annotations

import json

from cli_helpers import Served, run_cli

from runq import SyncClient


def test_a_breaker_opened_by_the_cli_holds_its_type_until_closed(served: Served) -> None:
    s = ["--server", served.address]
    r = run_cli("breakers", "open", "echo", "--reason", "relay down", *s)
    assert (r.returncode, r.stderr) == (0, "") and r.stdout == "breaker of echo open (until closed by hand)\n"
    with SyncClient(served.address) as c:
        tid = c.enqueue("echo", {"word": "held"})
        r = run_cli("why", str(tid), *s)
        assert r.returncode == 0 and r.stdout.startswith(f"task {tid}: breaker_open: "), r.stdout
        assert c.get(tid)["state"] == "ready"
        r = run_cli("breakers", "--json", *s)
        (br,) = json.loads(r.stdout)
        assert (br["type"], br["state"], br["manual"], br["waiting"]) == ("echo", "open", True, 1)
        r = run_cli("breakers", *s)
        assert r.returncode == 0 and "open (by hand)" in r.stdout and "echo" in r.stdout
        r = run_cli("breakers", "close", "echo", *s)
        assert (r.returncode, r.stdout) == (0, "breaker of echo closed\n")
        assert c.wait(tid, timeout=20)["state"] == "succeeded"
        r = run_cli("why", str(tid), "--json", *s)
        assert (r.returncode, json.loads(r.stdout)) == (0, None)  # (finished: nothing holds it)
        assert c.server_events()[-1]["kind"] == "breaker_closed"
    r = run_cli("breakers", "rm", "echo", *s)
    assert (r.returncode, r.stdout) == (0, "breaker of echo removed\n")
    r = run_cli("breakers", "close", "echo", *s)
    assert r.returncode == 1 and r.stderr.startswith("runq close: ") and "no breaker" in r.stderr


def test_limits_set_list_and_remove(served: Served) -> None:
    s = ["--server", served.address]
    r = run_cli("limits", "set", "queue", "mail", "--rate", "10/s", "--burst", "5", "--concurrency", "3",
                "--key", "customer", "--json", *s)
    assert r.returncode == 0, r.stderr
    lim = json.loads(r.stdout)
    assert (lim["scope"], lim["name"], lim["key"], lim["rate"], lim["period"], lim["burst"], lim["concurrency"]) == (
        "queue", "mail", "customer", 10.0, 1.0, 5, 3)
    r = run_cli("limits", *s)
    assert r.returncode == 0 and "mail" in r.stdout and "customer" in r.stdout and "10/1s" in r.stdout, r.stdout
    with SyncClient(served.address) as c:
        assert [(x["name"], x["key"]) for x in c.limits()] == [("mail", "customer")]
    r = run_cli("limits", "rm", "queue", "mail", "--key", "customer", *s)
    assert (r.returncode, r.stdout) == (0, "limit on queue mail [customer] removed\n")
    assert json.loads(run_cli("limits", "--json", *s).stdout) == []
    # mistakes: a usage error (2) before anything is sent, or the server's refusal (1)
    bad_rate = run_cli("limits", "set", "queue", "mail", "--rate", "ten", *s)
    assert bad_rate.returncode == 2 and "rate 'ten'" in bad_rate.stderr
    nothing = run_cli("limits", "set", "queue", "mail", *s)
    assert nothing.returncode == 2 and "give --rate, --concurrency, or both" in nothing.stderr
    zero = run_cli("limits", "set", "queue", "mail", "--concurrency", "0", *s)
    assert zero.returncode == 1 and "'concurrency' must be" in zero.stderr
    assert json.loads(run_cli("limits", "--json", *s).stdout) == []
