"""CDD end to end on a tiny random-teacher run: train(method="cdd") -> run directory whose
deployed model is teacher + global student, domain students and partition kept beside it,
and an interrupted CDD run resumed to bit-identical weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cdd_engine.checkpoint import load_checkpoint
from cdd_engine.training import train
from rd_fixtures import TINY, one_step_then_crash, one_torch_thread, write_tiny_mvtec  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_mvtec(tmp_path_factory.mktemp("data"), n_train=10, n_bad=6)


KW = dict(category="widget", noise_ratio=0.3, seed=5, method="cdd", **TINY)


def test_cdd_run_directory_and_inference_model(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path / "run", epochs=2, method_options={"domains": 3}, **KW)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"] == "cdd" and cfg["complete"]
    mc = cfg["method_config"]
    assert mc["domains"] == 3 and mc["partition"] == "random" and sum(mc["domain_sizes"]) == 13  # 10 + int(0.3*10)
    # the defaults, both recorded in the run (benchmarks/RESULTS.md, teacher-share and teacher-gate ablations)
    assert mc["teacher_share"] == 0.0 and mc["teacher_gate"] == 0.9
    # domain students and the partition stay in the checkpoint for analysis
    dom = load_file(str(run / "domain_students.safetensors"))
    for j in range(3):
        assert any(k.startswith(f"domain{j}.") for k in dom)
    domains = dom["cdd_state.domains"]
    assert domains.shape == (13,) and torch.bincount(domains, minlength=3).tolist() == mc["domain_sizes"]
    # the deployed model is teacher + global student only, exactly like an RD checkpoint
    model = load_checkpoint(run)
    glob = load_file(str(run / "student.safetensors"))
    sd = model.student.state_dict()
    assert sd.keys() == glob.keys()
    assert all(torch.equal(sd[k], glob[k]) for k in sd)
    assert not any(k.startswith("domain") for k in glob)
    # the global student differs from every domain student (it was trained toward other targets)
    key = "decoder.stages.0.0.conv1.weight"
    assert all(not torch.equal(glob[key], dom[f"domain{j}.{key}"]) for j in range(3))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t, s = model(x)
    assert [f.shape for f in t] == [f.shape for f in s]
    scores = json.loads((run / "train_scores.json").read_text())
    assert len(scores["scores"]) == 13 and sum(e["injected"] for e in scores["scores"]) == 3
    # CDD's default threshold is median + 2 robust sigmas (RD's is 3): recomputed from the scores
    s = np.array([e["score"] for e in scores["scores"]])
    med = np.median(s)
    assert scores["rule"]["k"] == 2.0 and cfg["training"]["threshold_k"] is None
    assert scores["threshold"] == pytest.approx(med + 2.0 * 1.4826 * np.median(np.abs(s - med)), rel=1e-12)
    assert json.loads((run / "metrics.json").read_text())["n_injected"] == 3


def test_bad_cdd_options_are_clear_errors(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="unknown CDD option"):
        train(tiny_data, tmp_path / "a", epochs=1, method_options={"domain": 2}, **KW)
    with pytest.raises(ValueError, match="domains must be an int >= 2"):
        train(tiny_data, tmp_path / "b", epochs=1, method_options={"domains": 1}, **KW)


def _killed_in_second_global_epoch(monkeypatch, run) -> None:
    """Runs ``run()`` with the trainer killed in its 2nd global-student epoch after one update
    (KeyboardInterrupt), then restores the trainer."""
    import cdd_engine.cdd.trainer as trainer_mod
    real_fit = trainer_mod.fit_epoch
    state = {"global_calls": 0}

    def crashing_fit(student, batches, *a, **k):
        if str(k.get("desc", "")).startswith("CDKA"):
            state["global_calls"] += 1
            if state["global_calls"] == 2:
                return one_step_then_crash(real_fit, student, batches, *a, **k)
        return real_fit(student, batches, *a, **k)

    monkeypatch.setattr(trainer_mod, "fit_epoch", crashing_fit)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(trainer_mod, "fit_epoch", real_fit)


@pytest.mark.parametrize("options", [{"domains": 2, "partition": "cluster"},
                                     {"domains": 2, "schedule": "alternate", "warmup_epochs": 1}],
                         ids=["sequential-cluster", "alternate"])
def test_interrupted_cdd_run_resumes_to_bit_identical_weights(tiny_data, tmp_path, monkeypatch, options):
    kw = dict(KW, method_options=options)
    straight = train(tiny_data, tmp_path / "straight", epochs=2, **kw)

    _killed_in_second_global_epoch(monkeypatch, lambda: train(tiny_data, tmp_path / "resumed", epochs=2, **kw))
    assert json.loads((tmp_path / "resumed/config.json").read_text())["epoch"] == 1
    resumed = train(tiny_data, tmp_path / "resumed", epochs=2, resume=True, **kw)
    for name in ("student.safetensors", "domain_students.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and len(a) > 50
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k}"


def test_resume_keeps_an_option_the_run_predates(tiny_data, tmp_path, monkeypatch):
    """A run recorded before ``teacher_gate`` existed trained pure CDD; resumed by today's code
    (default gate 0.9) it must go on with pure CDD, exactly like a straight pure-CDD run."""
    pure = dict(KW, method_options={"domains": 2, "teacher_gate": 0.0})
    straight = train(tiny_data, tmp_path / "straight", epochs=2, **pure)
    old = tmp_path / "old"
    _killed_in_second_global_epoch(monkeypatch, lambda: train(tiny_data, old, epochs=2, **pure))
    cfg = json.loads((old / "config.json").read_text())  # rewrite it as the older version wrote it
    del cfg["training"]["method_options"]["teacher_gate"], cfg["method_config"]["teacher_gate"]
    (old / "config.json").write_text(json.dumps(cfg))
    resumed = train(tiny_data, old, epochs=2, resume=True, **dict(KW, method_options={"domains": 2}))
    assert json.loads((resumed / "config.json").read_text())["method_config"]["teacher_gate"] == 0.0
    a, b = load_file(str(straight / "student.safetensors")), load_file(str(resumed / "student.safetensors"))
    assert a.keys() == b.keys() and len(a) > 50
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_streamed_teacher_features_give_the_same_students():
    """Without the feature cache (large data sets) targets are computed per batch instead of
    being cached; the students must not change."""
    from cdd_engine.cdd import CDDOptions, train_cdd
    from cdd_engine.models import build_teacher
    from cdd_engine.training.loop import TeacherFeatures

    class Images(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.x = torch.randn(9, 3, 64, 64, generator=torch.Generator().manual_seed(0))

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i):
            return {"image": self.x[i]}

    torch.manual_seed(0)
    teacher, _ = build_teacher("resnet18", "random")
    states = []
    for cache in (True, False):
        feats = TeacherFeatures(teacher, Images(), 4, cache=cache)
        res = train_cdd(feats, "resnet18", teacher.stage_channels, CDDOptions(domains=2, partition="cluster"), 2, 4,
                        seed=1, progress=False)
        states.append({"g": res.global_student.state_dict(), "d": res.domain_students[1].state_dict(),
                       "p": res.domains})
    assert torch.equal(states[0]["p"], states[1]["p"])
    for part in ("g", "d"):
        for k, v in states[0][part].items():
            assert torch.equal(v, states[1][part][k]), f"{part}: {k}"
