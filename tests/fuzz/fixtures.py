"""The engines under test, built once per campaign."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .cases import RUN_BACKBONE, RUN_SIZE

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def make_fixtures(root: Path) -> dict:
    """Build the fixture engines once: a micro OpenVINO engine (three convolutions, 32x32) and a
    run directory of the smallest real RD model with its torch engine. -> {name: path}."""
    import numpy as np  # noqa: F401
    import torch

    sys.path.insert(0, str(TESTS))
    sys.path.insert(0, str(ROOT / "csrc" / "tests"))
    import make_test_engine as mte
    from engine_helpers import write_run_dir

    import cdd_engine
    from cdd_engine.models import build_rd_model

    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    ov = Path(mte.cached_engine(micro=True)["engine"])
    shutil.copytree(ov, root / "engine_ov")
    model = build_rd_model(RUN_BACKBONE, pretrained=False, image_size=RUN_SIZE, seed=0).eval()
    run = write_run_dir(root / "run", model)
    cdd_engine.build(run, backend="torch", max_batch=4, output_dir=root / "engine_torch", runtime="python")
    # a second torch engine of another seed: a model file swapped between engines
    other = build_rd_model(RUN_BACKBONE, pretrained=False, image_size=RUN_SIZE, seed=1).eval()
    run2 = write_run_dir(root / "run_other", other)
    cdd_engine.build(run2, backend="torch", max_batch=4, output_dir=root / "engine_torch_other",
                     runtime="python")
    return {"root": str(root), "ov": str(root / "engine_ov"), "torch": str(root / "engine_torch"),
            "torch_other": str(root / "engine_torch_other"), "run": str(run)}


def fixture_manifests(fx: dict) -> dict[str, dict]:
    return {t: json.loads((Path(fx[t]) / "engine.json").read_text()) for t in ("ov", "torch")}
