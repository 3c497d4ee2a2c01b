"""``cdd-engine bench`` (issue 11 item 9): the stage table comes from the same timed calls as the
throughput table (so they agree), temporary engines are removed, and ``--engine DIR`` times an
engine the user built. Structure only: no speed is asserted."""
from __future__ import annotations

import json
import shutil
import tempfile

import numpy as np
import pytest

from cdd_engine.bench import EAGER_STAGES, eager_pipeline, throughput_benchmark, time_interleaved, to_markdown
from cdd_engine.cli import main

from engine_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from engine_helpers import engine_dir, tiny_model


def test_eager_stages_add_up_to_the_timed_call():
    """Each timed eager call records its own stages: their sum is that call, not another burst's."""
    stages: dict[str, list[float]] = {}
    run = eager_pipeline(tiny_model(), stages=stages)
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    times = time_interleaved({"eager": lambda: run(x)}, rounds=4, warmup=1)["eager"]
    assert set(stages) == set(EAGER_STAGES) and all(len(v) == 5 for v in stages.values())  # warm-up + 4
    sums = np.sum([stages[k][1:] for k in EAGER_STAGES], axis=0)
    assert np.all(sums <= np.asarray(times))
    assert np.median(sums / np.asarray(times)) > 0.9


def test_interleaving_puts_every_contender_behind_every_other():
    """A rotated order kept each contender behind the same one (the one behind the eager pipeline
    paid for torch's spinning threads): every round runs each contender once, in a seeded random
    order, and over the rounds each one follows each other one."""
    log: list[str] = []
    names = ["eager", "a", "b", "c"]
    times = time_interleaved({n: (lambda n=n: log.append(n)) for n in names}, rounds=40, warmup=1)
    assert all(len(v) == 40 for v in times.values())
    rounds = [log[i:i + 4] for i in range(4, len(log), 4)]  # after the warm-up round
    assert all(sorted(r) == sorted(names) for r in rounds)
    follows = {(r[i], r[i + 1]) for r in rounds for i in range(3)}
    assert follows == {(x, y) for x in names for y in names if x != y}
    log.clear()
    time_interleaved({n: (lambda n=n: log.append(n)) for n in names}, rounds=40, warmup=1)
    assert [log[i:i + 4] for i in range(4, len(log), 4)] == rounds  # seeded: the same order again


def test_tables_agree_and_no_temporary_engine_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))        # where the bench's temporary folder goes
    res = throughput_benchmark(["resnet18"], ["torch"], [2], image_size=64, rounds=3, stage_reps=1)
    assert list(tmp_path.iterdir()) == []                           # the built engine went with its folder
    assert res["threads"]["torch"] == res["threads"]["engines"]
    run = res["runs"][0]
    st = run["stages_ms_per_image"]["torch"]
    eager_call = run["results"]["eager"]["p50_ms_per_image"]
    assert run["results"]["eager"]["p50_ms_per_image"] == pytest.approx(run["results"]["eager"]["p50_ms"] / 2)
    # medians of the same calls: the stages cannot add up to much more or much less than the call
    assert 0.5 * eager_call < sum(st[k] for k in EAGER_STAGES) < 1.5 * eager_call
    md = to_markdown(res)
    assert "p50 ms/image" in md and "same interleaved rounds" in md and "eager call" in md


def test_bench_engine_times_a_built_engine(tmp_path, capsys):
    report = tmp_path / "b.json"
    assert main(["bench", "--engine", str(engine_dir("torch")), "--batch-sizes", "1,2", "--rounds", "2",
                 "--no-postprocess", "--json", str(report), "--quiet"]) == 0
    res = json.loads(report.read_text())
    assert res["engine_dir"] == str(engine_dir("torch")) and res["image_size"] == [64, 64]
    assert [r["batch"] for r in res["runs"]] == [1, 2]
    for r in res["runs"]:
        assert set(r["results"]) == {"eager", "torch"} and r["results"]["torch"]["calls"] == 2
        assert set(r["stages_ms_per_image"]["torch"]) >= set(EAGER_STAGES)
    assert "Engine: " in capsys.readouterr().out
    # an engine whose run directory is gone is timed alone, and the table says why
    lone = tmp_path / "lone"
    shutil.copytree(engine_dir("torch"), lone)
    manifest = json.loads((lone / "engine.json").read_text())
    manifest["source_checkpoint"]["path"] = str(tmp_path / "gone")
    (lone / "engine.json").write_text(json.dumps(manifest))
    assert main(["bench", "--engine", str(lone), "--batch-sizes", "1", "--rounds", "1", "--no-postprocess",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "eager not timed" in out and "| engine | 1 | torch |" in out


def test_bench_refuses_to_overwrite_results(tmp_path, capsys):
    md = tmp_path / "b.md"
    md.write_text("earlier results")
    assert main(["bench", "--engine", str(engine_dir("torch")), "--md", str(md), "--no-postprocess"]) == 2
    assert "--force" in capsys.readouterr().err and md.read_text() == "earlier results"
