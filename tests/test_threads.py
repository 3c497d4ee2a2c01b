"""The demo's automatic thread count (cdd_engine/threads.py, issue 11 item 7): the rule, and that
`cdd-engine demo` applies it unless --threads is given."""
from __future__ import annotations

import pytest
import torch

from cdd_engine import cli, threads


@pytest.mark.parametrize("cores, load, want", [
    (2, 0.0, 2),    # idle: every core
    (2, 0.4, 2),    # a little background work: still both
    (2, 1.0, 1),    # one core's worth busy: the free one
    (2, 3.5, 1),    # oversubscribed (the shared development machine): one thread, never zero
    (16, 4.2, 12),  # a bigger machine: what the load leaves free, rounded
    (16, 0.0, 16),
    (1, 0.0, 1),
])
def test_rule(cores, load, want):
    assert threads.auto_threads(cores=cores, load=load) == want


def test_defaults_come_from_this_machine():
    n = threads.auto_threads()
    assert 1 <= n <= threads.usable_cores()
    assert "load average" in threads.describe()


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _demo_seen_threads(monkeypatch, argv):
    """Run `cdd-engine <argv>` with the demo's work replaced by a probe of torch's thread count."""
    seen = {}

    def fake_demo(a):
        seen["threads"] = torch.get_num_threads()
        return 0

    monkeypatch.setattr(cli, "run_demo", fake_demo)
    assert cli.main(argv) == 0
    return seen["threads"]


def test_demo_uses_the_rule(monkeypatch, restore_threads, capsys):
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "auto_threads", lambda: 1)
    assert _demo_seen_threads(monkeypatch, ["demo", "--quick"]) == 1
    assert "torch threads: 1" in capsys.readouterr().err


def test_threads_option_overrides_the_rule(monkeypatch, restore_threads):
    torch.set_num_threads(1)
    monkeypatch.setattr(threads, "auto_threads", lambda: pytest.fail("--threads must win over the rule"))
    assert _demo_seen_threads(monkeypatch, ["demo", "--quick", "--threads", "2"]) == 2
    assert _demo_seen_threads(monkeypatch, ["--threads", "2", "demo", "--quick"]) == 2
