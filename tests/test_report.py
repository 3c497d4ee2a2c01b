"""Contamination report: ranking, precision on known injected images, CSV/JSON, overlays."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from cdd_engine.checkpoint import CheckpointError
from cdd_engine.report import contamination_report, overlay_name, precision_at, ranked_training_scores
from cdd_engine.training import train
from rd_fixtures import TINY, one_torch_thread, write_tiny_mvtec  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    # a module fixture runs before the function-scoped one_torch_thread; on 2 shared cores a
    # second OpenMP thread made this file cost 20 s of CPU instead of 9 s (measured), so one here too
    data = write_tiny_mvtec(tmp_path_factory.mktemp("data"), n_train=8, n_bad=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(data, tmp_path_factory.mktemp("runs") / "run", category="widget", epochs=1,
                     noise_ratio=0.25, **TINY)
    finally:
        torch.set_num_threads(threads)


def _fake_scores(tmp_path, entries, threshold=0.5):
    (tmp_path / "train_scores.json").write_text(json.dumps({"threshold": threshold, "scores": entries}))
    return tmp_path


def test_ranking_and_precision_by_hand(tmp_path):
    entries = [{"path": "a.png", "score": 0.2, "injected": False}, {"path": "b.png", "score": 0.9, "injected": True},
               {"path": "c.png", "score": 0.7, "injected": False}, {"path": "d.png", "score": 0.6, "injected": True}]
    ranked, thr = ranked_training_scores(_fake_scores(tmp_path, entries))
    assert thr == 0.5
    assert [e["path"] for e in ranked] == ["b.png", "c.png", "d.png", "a.png"]
    assert [e["rank"] for e in ranked] == [1, 2, 3, 4]
    assert [e["above_threshold"] for e in ranked] == [True, True, True, False]
    assert precision_at(ranked, 1) == 1.0 and precision_at(ranked, 2) == 0.5 and precision_at(ranked, 3) == 2 / 3
    unknown = [dict(e, injected=None) for e in entries]
    ranked_u, _ = ranked_training_scores(_fake_scores(tmp_path, unknown))
    assert precision_at(ranked_u, 2) != precision_at(ranked_u, 2)  # NaN: provenance unknown


def test_report_files_of_a_real_run(run_dir, tmp_path):
    out = tmp_path / "report"
    r = contamination_report(run_dir, out, top=3)
    scores = json.loads((run_dir / "train_scores.json").read_text())
    n = len(scores["scores"])
    s = r["summary"]
    assert s["n_train"] == n == 10 and s["n_injected_known"] == 2
    assert 0.0 <= s["precision_at_n_injected"] <= 1.0
    rows = list(csv.DictReader(open(out / "contamination.csv")))
    assert len(rows) == n
    got = [float(x["score"]) for x in rows]
    assert got == sorted(got, reverse=True)
    assert sorted(got) == sorted(e["score"] for e in scores["scores"])
    top2 = {x["path"] for x in rows[:2]}
    injected = {e["path"] for e in scores["scores"] if e["injected"]}
    assert s["precision_at_n_injected"] == len(top2 & injected) / 2
    assert len(r["overlays"]) == 3 and all((out / p).is_file() for p in r["overlays"])
    # names keep the rank and the folders (issue 11 item 2: train/good/001.png and test/spot/001.png differ)
    for e, p in zip(rows[:3], r["overlays"]):
        folders = "-".join(e["path"].split("/")[:-1])
        assert p == f"overlays/{int(e['rank']):04d}_{folders}-{e['path'].split('/')[-1][:-4]}.png"
    assert r["contact_sheet"] == "overlays/contact_sheet.png" and (out / r["contact_sheet"]).is_file()
    assert json.loads((out / "contamination.json").read_text())["summary"] == json.loads(json.dumps(s))


def test_report_errors(run_dir, tmp_path):
    with pytest.raises(ValueError, match="top must be"):
        contamination_report(run_dir, tmp_path / "r", top=0)
    with pytest.raises(FileNotFoundError, match="pass data=DIR"):
        contamination_report(run_dir, tmp_path / "r", data=tmp_path / "missing")
    with pytest.raises(CheckpointError):
        contamination_report(tmp_path, tmp_path / "r")


def test_report_never_overwrites_a_users_file(run_dir, tmp_path):
    out = tmp_path / "report"
    contamination_report(run_dir, out, top=2)
    contamination_report(run_dir, out, top=2)  # a rerun replaces its own files
    third = out / "overlays" / overlay_name(ranked_training_scores(run_dir)[0][2])
    third.write_bytes(b"an engineer's own file")  # where --top 3 would put its third overlay
    (out / "contamination.csv").unlink()
    with pytest.raises(FileExistsError, match="--force"):
        contamination_report(run_dir, out, top=3)
    assert third.read_bytes() == b"an engineer's own file"
    assert not (out / "contamination.csv").exists()  # refused before anything was written
    contamination_report(run_dir, out, top=3, force=True)
    assert third.read_bytes()[:4] == b"\x89PNG"


def test_report_command_force(run_dir, tmp_path, capsys):
    from cdd_engine.cli import main
    out = tmp_path / "r"
    (out / "overlays").mkdir(parents=True)
    mine = out / "overlays" / overlay_name(ranked_training_scores(run_dir)[0][0])
    mine.write_bytes(b"mine")
    args = ["report", "--checkpoint", str(run_dir), "--out", str(out), "--top", "1"]
    assert main(args) == 2 and "--force" in capsys.readouterr().err and mine.read_bytes() == b"mine"
    assert main(args + ["--force"]) == 0 and mine.read_bytes()[:4] == b"\x89PNG"
