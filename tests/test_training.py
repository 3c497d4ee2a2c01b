"""RD training: loss, batching, feature cache, threshold rule, options, the run directory,
and that an interrupted run resumed from its checkpoint ends with bit-identical weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cdd_engine.training import (TeacherFeatures, TrainConfig, batch_indices, get_method, method_names,
                                 rd_loss, rd_loss_per_image, threshold_from_scores, train)
from cdd_engine.training import loop as loop_mod
from rd_fixtures import TINY, one_step_then_crash, one_torch_thread, write_tiny_mvtec  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_mvtec(tmp_path_factory.mktemp("data"))


# ----------------------------------------------------------------------------- loss
def _numpy_rd_loss(t, s):
    """Independent RD loss: per image, 1 - cos of the flattened C·H·W vectors, summed over scales."""
    total = np.zeros(t[0].shape[0])
    for a, b in zip(t, s):
        a = a.reshape(a.shape[0], -1)
        b = b.reshape(b.shape[0], -1)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-8)
        total += 1 - cos
    return total


def test_rd_loss_matches_numpy_on_odd_shapes():
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 5, 7, 9), (3, 6, 4, 5), (3, 11, 2, 3)]
    t = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    s = [x + 0.7 * torch.randn(x.shape, generator=g, dtype=torch.float64) for x in t]
    want = _numpy_rd_loss([x.numpy() for x in t], [x.numpy() for x in s])
    per = rd_loss_per_image(t, s)
    assert per.shape == (3,)
    np.testing.assert_allclose(per.numpy(), want, rtol=1e-12, atol=1e-12)
    assert rd_loss(t, s).item() == pytest.approx(want.mean(), rel=1e-12)
    assert rd_loss(t, t).item() == pytest.approx(0.0, abs=1e-12)


def test_rd_loss_rejects_mismatched_features():
    a = [torch.randn(2, 3, 4, 4)]
    with pytest.raises(ValueError, match="scale 0"):
        rd_loss(a, [torch.randn(2, 3, 4, 5)])
    with pytest.raises(ValueError, match="number of scales"):
        rd_loss(a, a + a)


# ----------------------------------------------------------------------------- batching, features
def test_batch_indices_cover_once_seeded_and_merge_a_single_tail():
    b1 = batch_indices(17, 4, torch.Generator().manual_seed(3))
    b2 = batch_indices(17, 4, torch.Generator().manual_seed(3))
    assert [x.tolist() for x in b1] == [x.tolist() for x in b2]
    assert sorted(torch.cat(b1).tolist()) == list(range(17))
    assert [len(x) for x in b1] == [4, 4, 4, 5]           # 17 = 4+4+4+4+1: the lone tail is merged
    assert [x.tolist() for x in batch_indices(6, 4, None)] == [[0, 1, 2, 3], [4, 5]]


def _toy_teacher(seed: int, channels: int, size: int, n: int):
    """A two-scale conv 'teacher' and n random (3, size, size) images."""
    torch.manual_seed(seed)
    teacher = torch.nn.Conv2d(3, channels, 3, stride=2, padding=1).eval()

    def teacher_fn(x):
        return [teacher(x), teacher(x)[:, :, ::2, ::2]]

    return teacher_fn, [{"image": torch.randn(3, size, size)} for _ in range(n)]


def test_cached_features_equal_computed_features():
    teacher_fn, data = _toy_teacher(0, 5, 16, 7)
    cached = TeacherFeatures(teacher_fn, data, batch_size=3, cache=True)
    live = TeacherFeatures(teacher_fn, data, batch_size=3, cache=False)
    got_c = list(cached.batches(torch.Generator().manual_seed(5)))
    got_l = list(live.batches(torch.Generator().manual_seed(5)))
    assert [len(i) for i, _ in got_c] == [3, 4]      # 7 = 3 + 3 + 1, the lone tail merged
    assert len(got_l) == 2
    for (ic, fc), (il, fl) in zip(got_c, got_l):
        assert ic.tolist() == il.tolist()
        for a, b in zip(fc, fl):
            assert not a.requires_grad
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_batches_of_serves_a_subset_in_the_given_order():
    teacher_fn, data = _toy_teacher(1, 4, 12, 9)
    order = [torch.tensor([7, 2, 5]), torch.tensor([0]), torch.tensor([8, 3])]  # a subset, unsorted
    for cache in (True, False):
        feats = TeacherFeatures(teacher_fn, data, batch_size=4, cache=cache)
        got = list(feats.batches_of(order))
        assert [i.tolist() for i, _ in got] == [b.tolist() for b in order]
        for idx, fs in got:
            with torch.no_grad():
                want = teacher_fn(torch.stack([data[i]["image"] for i in idx.tolist()]))
            for a, w in zip(fs, want):
                torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"in \[0, 9\)"):
        list(feats.batches_of([torch.tensor([3, 9])]))
    with pytest.raises(TypeError, match="int64"):
        list(feats.batches_of([torch.tensor([1.0, 2.0])]))
    with pytest.raises(TypeError, match="non-empty"):
        feats.batches_of([torch.tensor([], dtype=torch.int64)])


# ----------------------------------------------------------------------------- threshold, options, methods
def test_threshold_rules_by_hand():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 100.0])   # median 3, |dev| = 2,1,0,1,97 -> MAD 1
    r = threshold_from_scores(scores, "median_mad", 3.0)
    assert r["median"] == 3.0 and r["mad"] == 1.0
    assert r["threshold"] == pytest.approx(3.0 + 3.0 * 1.4826)
    assert threshold_from_scores(scores, "quantile", 0.5)["threshold"] == 3.0
    with pytest.raises(ValueError, match="finite"):
        threshold_from_scores(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="rule"):
        threshold_from_scores(scores, "mean")


def test_threshold_k_default_depends_on_the_method_and_an_explicit_k_wins(tmp_path):
    def cfg(**kw):
        return TrainConfig(data=tmp_path, out=tmp_path / "run", **kw)
    assert cfg().threshold_k is None                               # recorded as "not set"
    assert cfg(method="rd").effective_threshold_k == 3.0           # RESULTS.md: F1 0.802 (k 3) vs 0.798 (k 2)
    assert cfg(method="cdd").effective_threshold_k == 2.0          # RESULTS.md: F1 0.735 (k 2) vs 0.601 (k 3)
    assert cfg(method="cdd", threshold_k=3.0).effective_threshold_k == 3.0
    assert cfg(method="rd", threshold_k=0.5).effective_threshold_k == 0.5
    assert cfg(threshold_rule="quantile", threshold_k=0.9).effective_threshold_k == 0.9
    with pytest.raises(ValueError, match="'quantile' needs threshold_k"):
        cfg(threshold_rule="quantile")
    with pytest.raises(ValueError, match="threshold_k must be in"):
        cfg(threshold_rule="quantile", threshold_k=2.0)
    with pytest.raises(TypeError, match="threshold_k must be a finite number"):
        cfg(threshold_k="2")


@pytest.mark.parametrize("kw, err, msg", [
    (dict(epochs=0), ValueError, "epochs must be >= 1"),
    (dict(batch_size=2.5), TypeError, "batch_size must be an int"),
    (dict(lr=0.0), ValueError, "lr"),
    (dict(layout="coco"), ValueError, "layout must be one of"),
    (dict(backbone="vgg16"), ValueError, "backbone must be one of"),
    (dict(image_size=16), ValueError, "image_size must be >= 32"),
    (dict(noise_ratio=-0.1), ValueError, "noise_ratio"),
    (dict(betas=(0.5, 1.5)), ValueError, "betas"),
])
def test_config_rejects_bad_options(kw, err, msg):
    with pytest.raises(err, match=msg):
        TrainConfig(data="d", out="o", **kw)


def test_method_registry(tiny_data, tmp_path, monkeypatch):
    from cdd_engine.training import methods
    assert {"rd", "cdd"} <= set(method_names())
    assert get_method("rd").name == "rd"
    assert get_method("cdd").name == "cdd"                 # registered on first use by importing its module
    # an announced method that is not in this version says so, before any work is done
    monkeypatch.setitem(methods.PLANNED_METHODS, "cfa", "--method cfa arrives with a later issue")
    with pytest.raises(NotImplementedError, match="arrives with a later issue"):
        train(tiny_data, tmp_path / "run", category="widget", method="cfa", epochs=1, **TINY)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="unknown training method"):
        get_method("patchcore")


def test_unknown_train_option_is_a_type_error(tiny_data, tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        train(tiny_data, tmp_path / "run", category="widget", learning_rate=0.1, **TINY)


# ----------------------------------------------------------------------------- a whole run
def test_train_writes_a_complete_run_directory(tiny_data, tmp_path):
    run = train(tiny_data, tmp_path / "run", category="widget", epochs=2, noise_ratio=0.25, eval_every=1, **TINY)
    names = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert {"config.json", "student.safetensors", "teacher.safetensors", "noise_manifest.json",
            "train_scores.json", "metrics.json", "state/optimizer.safetensors", "state/optimizer.json",
            "state/rng.safetensors", "state/rng.json"} <= names
    assert not [n for n in names if not n.endswith((".json", ".safetensors"))]   # never pickle
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["epoch"] == 2 and cfg["complete"] and cfg["method"] == "rd"
    assert cfg["data"]["n_train"] == 9 + 2 and cfg["data"]["n_injected"] == 2  # int(0.25 * 9) = 2
    assert cfg["model"]["image_size"] == [64, 64] and cfg["model"]["teacher_weights_id"] == "random"
    assert len(cfg["timings"]["epoch_s"]) == 2 and cfg["seeds"]["seed"] == 0
    assert all(np.isfinite(h["loss"]) for h in cfg["history"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_test"] == 3 + 4 - 2 and metrics["n_test_anomalous"] == 2
    assert metrics["n_train"] == 11 and metrics["n_injected"] == 2
    for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= metrics[k] <= 1.0
    assert [h["epoch"] for h in metrics["history"]] == [1]      # --eval-every 1, final eval separate
    scores = json.loads((run / "train_scores.json").read_text())
    assert len(scores["scores"]) == 11 and sum(e["injected"] for e in scores["scores"]) == 2
    s = np.array([e["score"] for e in scores["scores"]])
    assert scores["threshold"] == pytest.approx(threshold_from_scores(s)["threshold"])
    assert scores["rule"]["k"] == 3.0 and scores["rule"]["k_source"] == "default for method 'rd'"

    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_data, run, category="widget", epochs=2, **TINY)
    # a resume without threshold_k keeps the run's recorded k (runs before the per-method
    # default recorded a number, 3.0; here 1.5 so that it differs from every default)
    cfg["training"]["threshold_k"] = 1.5
    (run / "config.json").write_text(json.dumps(cfg))
    train(tiny_data, run, category="widget", epochs=3, resume=True, noise_ratio=0.25, **TINY)
    scores = json.loads((run / "train_scores.json").read_text())
    s = np.array([e["score"] for e in scores["scores"]])
    assert scores["rule"]["k"] == 1.5 and scores["rule"]["k_source"] == "threshold_k"
    assert scores["threshold"] == pytest.approx(threshold_from_scores(s, "median_mad", 1.5)["threshold"])
    with pytest.raises(ValueError, match="lr"):
        train(tiny_data, run, category="widget", epochs=3, lr=0.01, resume=True, noise_ratio=0.25, **TINY)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_data, tmp_path / "empty", category="widget", resume=True, **TINY)


def _tree(d):
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else None for p in sorted(d.rglob("*"))}


def test_out_onto_a_non_empty_folder_that_is_not_a_run_is_refused(tiny_data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.json").write_text("the user's own metrics")
    (out / "photo.png").write_bytes(b"\x89PNG")
    before = _tree(out)
    with pytest.raises(FileExistsError, match=r"non-empty folder that is not a run directory \(it holds "
                                              r"metrics.json, photo.png\).*--force"):
        train(tiny_data, out, category="widget", epochs=1, **TINY)
    assert _tree(out) == before  # refused before anything was written
    run = train(tiny_data, out, category="widget", epochs=1, force=True, **TINY)
    assert (run / "photo.png").read_bytes() == b"\x89PNG" and (run / "config.json").is_file()
    with pytest.raises(FileExistsError, match="already holds a checkpoint.*--force"):
        train(tiny_data, out, category="widget", epochs=1, **TINY)


def test_forced_run_over_a_run_leaves_none_of_its_files(tiny_data, tmp_path):
    out = train(tiny_data, tmp_path / "run", category="widget", epochs=1, **TINY)
    (out / "domain_students.safetensors").write_bytes(b"from an earlier cdd run")
    train(tiny_data, out, category="widget", epochs=1, force=True, **TINY)
    assert not (out / "domain_students.safetensors").exists()


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(tiny_data, tmp_path, monkeypatch):
    with pytest.raises(Exception):
        train(tmp_path / "no_such_data", tmp_path / "new" / "run", category="widget", epochs=1, **TINY)
    assert list(tmp_path.iterdir()) == []  # neither the run folder nor its parent

    import cdd_engine.training.rd as rd_mod

    def crash(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(rd_mod, "fit_epoch", crash)  # after the noise manifest was written
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, mine, category="widget", epochs=1, noise_ratio=0.25, **TINY)
    assert list(mine.iterdir()) == []  # an empty folder the user made stays, empty
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, mine, category="widget", epochs=1, force=True, **TINY)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_cli_train_force(tiny_data, tmp_path):
    from cdd_engine.cli import main
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    args = ["train", "--data", str(tiny_data), "--category", "widget", "--out", str(out), "--epochs", "1",
            "--backbone", "efficientnet_lite0", "--teacher-weights", "random", "--image-size", "64",
            "--batch-size", "4", "--quiet"]
    assert main(args) != 0 and [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(args + ["--force"]) == 0 and (out / "config.json").is_file() and (out / "notes.txt").exists()


def test_interrupted_run_resumes_to_bit_identical_weights(tiny_data, tmp_path, monkeypatch):
    kw = dict(category="widget", noise_ratio=0.25, seed=7, **TINY)
    straight = train(tiny_data, tmp_path / "straight", epochs=3, **kw)

    # Interrupt the second run in the middle of epoch 3, after one optimizer step:
    real_fit = loop_mod.fit_epoch
    calls = {"n": 0}

    def crashing_fit(student, batches, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            return one_step_then_crash(real_fit, student, batches, *a, **k)
        return real_fit(student, batches, *a, **k)

    import cdd_engine.training.rd as rd_mod
    monkeypatch.setattr(rd_mod, "fit_epoch", crashing_fit)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, tmp_path / "resumed", epochs=3, **kw)
    assert json.loads((tmp_path / "resumed/config.json").read_text())["epoch"] == 2
    monkeypatch.setattr(rd_mod, "fit_epoch", real_fit)
    resumed = train(tiny_data, tmp_path / "resumed", epochs=3, resume=True, **kw)

    a = load_file(str(straight / "student.safetensors"))
    b = load_file(str(resumed / "student.safetensors"))
    assert a.keys() == b.keys() and len(a) > 50
    for k in a:
        assert torch.equal(a[k], b[k]), k                    # bit-identical, running stats included
    oa = load_file(str(straight / "state/optimizer.safetensors"))
    ob = load_file(str(resumed / "state/optimizer.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (straight, resumed))
    assert ma["image_auroc"] == mb["image_auroc"] and ma["aupro"] == mb["aupro"]


def test_training_leaves_global_torch_settings_alone(tiny_data, tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    train(tiny_data, tmp_path / "run", category="widget", epochs=1, **TINY)
    assert torch.are_deterministic_algorithms_enabled() == before
