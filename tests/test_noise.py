"""The FUAD noisy-training protocol: inject_noise and NoiseManifest."""
from __future__ import annotations

from pathlib import Path

import pytest

from cdd_engine.data import (ANOMALOUS, UNKNOWN, DatasetSplit, NoiseManifest, Sample, inject_noise,
                             read_dataset)


def _split(root: Path, n_train=50, n_good=10, n_bad=12) -> DatasetSplit:
    """A split of paths only (inject_noise never opens files)."""
    train = [Sample(str(root / "train" / "good" / f"{i:03d}.png"), UNKNOWN, None, "good") for i in range(n_train)]
    test = [Sample(str(root / "test" / "good" / f"{i:03d}.png"), 0, None, "good") for i in range(n_good)]
    kinds = ("crack", "hole", "scratch")
    test += [Sample(str(root / "test" / kinds[i % 3] / f"{i:03d}.png"), ANOMALOUS,
                    str(root / "ground_truth" / kinds[i % 3] / f"{i:03d}_mask.png"), kinds[i % 3])
             for i in range(n_bad)]
    return DatasetSplit("mvtec:thing", str(root), train, test)


def test_counts_labels_and_removal(tmp_path):
    split = _split(tmp_path)
    noisy, man = inject_noise(split, 0.2, seed=3)
    assert len(man.injected) == 10  # int(0.2 * 50)
    assert len(noisy.train) == 60 and noisy.train[:50] == split.train
    injected = noisy.train[50:]
    assert all(s.label == UNKNOWN and s.mask_path is None for s in injected)
    assert all(s.defect_type in ("crack", "hole", "scratch") for s in injected)  # provenance kept
    assert [Path(s.path).relative_to(tmp_path).as_posix() for s in injected] == man.injected
    assert len(noisy.test) == 22 - 10
    assert not {s.path for s in injected} & {s.path for s in noisy.test}
    assert sum(s.label == ANOMALOUS for s in noisy.test) == 2
    assert len(split.train) == 50 and len(split.test) == 22  # input untouched
    assert noisy.name == split.name and noisy.root == split.root


def test_floor_is_robust_to_float_error(tmp_path):
    # 0.29 * 100 == 28.999999999999996 in binary floating point; the protocol means 29
    _, man = inject_noise(_split(tmp_path, n_train=100, n_bad=40), 0.29, seed=0)
    assert len(man.injected) == 29
    _, man = inject_noise(_split(tmp_path, n_train=7), 0.3, seed=0)
    assert len(man.injected) == 2  # floor(2.1)


def test_determinism_and_seeds(tmp_path):
    split = _split(tmp_path)
    a = inject_noise(split, 0.1, seed=5)[1]
    b = inject_noise(split, 0.1, seed=5)[1]
    c = inject_noise(split, 0.1, seed=6)[1]
    assert a.injected == b.injected
    assert a.injected != c.injected
    assert len(set(a.injected)) == 5


def test_overlap_keeps_test_set(tmp_path):
    split = _split(tmp_path)
    noisy, man = inject_noise(split, 0.2, seed=1, overlap=True)
    assert man.overlap is True
    assert noisy.test == split.test and len(noisy.train) == 60
    plain, man2 = inject_noise(split, 0.2, seed=1)
    assert man2.injected == man.injected  # the same draw either way


def test_ratio_zero_and_refusal(tmp_path):
    split = _split(tmp_path)
    noisy, man = inject_noise(split, 0.0, seed=0)
    assert man.injected == [] and noisy.train == split.train and noisy.test == split.test
    with pytest.raises(ValueError, match=r"needs 15 anomalous test images but .* has only 12; "
                                         r"the largest possible ratio is 0\.2400"):
        inject_noise(split, 0.3, seed=0)
    with pytest.raises(ValueError, match="noise_ratio must be a finite number >= 0"):
        inject_noise(split, -0.1, seed=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        inject_noise(split, 0.1, seed=1.5)


def test_manifest_round_trip_and_apply(tmp_path):
    split = _split(tmp_path)
    noisy, man = inject_noise(split, 0.2, seed=9, overlap=False)
    path = tmp_path / "noise.json"
    man.save(path)
    back = NoiseManifest.load(path)
    assert back == man
    assert NoiseManifest.from_json(man.to_json()) == man
    again = back.apply(_split(tmp_path))  # a freshly read split
    assert again.train == noisy.train and again.test == noisy.test
    over = NoiseManifest(man.noise_ratio, man.seed, True, man.injected).apply(split)
    assert over.test == split.test and over.train == noisy.train


def test_apply_errors(tmp_path):
    split = _split(tmp_path)
    _, man = inject_noise(split, 0.1, seed=0)
    wrong = NoiseManifest(0.1, 0, False, man.injected[:-1] + ["test/crack/999.png"])
    with pytest.raises(ValueError, match=r"'test/crack/999.png', which is not in the test set"):
        wrong.apply(split)
    good = NoiseManifest(0.1, 0, False, man.injected[:-1] + ["test/good/000.png"])
    with pytest.raises(ValueError, match="not an anomalous test image"):
        good.apply(split)
    with pytest.raises(ValueError, match="made for another data set"):
        man.apply(_split(tmp_path, n_train=80))
    with pytest.raises(ValueError, match="missing injected"):
        NoiseManifest.from_json({"noise_ratio": 0.1, "seed": 0, "overlap": False})
    with pytest.raises(ValueError, match="format 7"):
        NoiseManifest.from_json({**man.to_json(), "format": 7})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        NoiseManifest.load(tmp_path / "bad.json")


def test_with_reader_paths(tmp_path):
    """Manifest paths are relative to the root read_dataset reports, so they survive a re-read."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "mv"
    files = [f"train/good/{i:03d}.png" for i in range(10)] + ["test/good/000.png"]
    files += [f"test/crack/{i:03d}.png" for i in range(4)] + [f"ground_truth/crack/{i:03d}_mask.png" for i in range(4)]
    for i, rel in enumerate(files):
        (root / "widget" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / "widget" / rel)
    split = read_dataset(root, "mvtec", "widget")
    noisy, man = inject_noise(split, 0.3, seed=2)
    assert all(p.startswith("widget/test/") for p in man.injected) and len(man.injected) == 3
    fresh = read_dataset(str(root) + "/", "mvtec", "widget")
    assert man.apply(fresh).train == noisy.train
