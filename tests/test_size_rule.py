"""The image-size rule (issue 11 item 5): a side must be a multiple of 32 and at least 32, for every
backbone. Checked before any work starts (training config, train, demo, build, bench), with the
rule in the message."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from cdd_engine.anomaly_map import anomaly_map
from cdd_engine.cli import main
from cdd_engine.models import build_rd_model
from cdd_engine.training.config import IMAGE_SIZE_MULTIPLE, MIN_IMAGE_SIZE, TrainConfig, check_image_size

from engine_helpers import model_and_run_dir
from rd_fixtures import one_torch_thread, write_tiny_mvtec  # noqa: F401 (autouse fixture)

BACKBONES = ("resnet18", "efficientnet_lite0", "wide_resnet50_2")


def _runs(backbone: str, side: int) -> bool:
    model = build_rd_model(backbone, pretrained=False, image_size=side, seed=0).eval()
    try:
        with torch.no_grad():
            t, s = model(torch.randn(1, 3, side, side))
            anomaly_map(t, s, (side, side))
        return True
    except (RuntimeError, ValueError):  # a conv shape error, or the map's shape check
        return False


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_rule_is_the_models_rule(backbone):
    """Every side the rule allows runs; sides it refuses include ones that fail mid-way."""
    for side in (32, 64, 96):
        assert side % IMAGE_SIZE_MULTIPLE == 0 and side >= MIN_IMAGE_SIZE
        assert _runs(backbone, side), side
    for side in (50, 80):
        assert not _runs(backbone, side), side      # the late, cryptic failure the rule prevents
        with pytest.raises(ValueError, match="multiple of 32"):
            check_image_size(side)


@pytest.mark.parametrize("size", [16, 31, 50, 65, 100, (64, 50)])
def test_bad_sizes_are_refused_with_the_rule(size):
    with pytest.raises(ValueError, match=r">= 32 and a multiple of 32 .*e\.g\. 64, 128, 256"):
        check_image_size(size)
    if isinstance(size, int):
        with pytest.raises(ValueError, match="multiple of 32"):
            TrainConfig(data="d", out="o", image_size=size)


def test_train_refuses_before_any_work(tmp_path, capsys):
    data = write_tiny_mvtec(tmp_path / "data")
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(out), "--image-size", "50", "--epochs", "1",
                 "--teacher-weights", "random", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "multiple of 32" in err and "got 50" in err
    assert not out.exists()


def test_build_and_bench_refuse_before_any_work(tmp_path, capsys):
    _, run = model_and_run_dir()
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["image_size"] = [50, 50]
    (bad / "config.json").write_text(json.dumps(cfg))
    assert main(["build", "--checkpoint", str(bad), "--backend", "torch", "--out", str(tmp_path / "e")]) == 2
    assert "multiple of 32" in capsys.readouterr().err and not (tmp_path / "e").exists()
    assert main(["bench", "--image-size", "50", "--backbones", "resnet18", "--backends", "torch"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
