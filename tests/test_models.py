"""The lead's RD models: feature shapes of every teacher (exactly docs/method.md for
wide_resnet50_2 at 256²), a frozen teacher, torchvision-layout weights loading with
strict=True, and clear WeightsErrors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from cdd_engine.models import WeightsError, build_rd_model, build_teacher
from cdd_engine.models.resnet import resnet18, wide_resnet50_2
from cdd_engine.models.teachers import file_sha256
from rd_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def wrn_model():
    return build_rd_model("wide_resnet50_2", pretrained=False, image_size=256, seed=0)


def test_wide_resnet50_2_shapes_are_design_section_2(wrn_model):
    m = wrn_model.eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        t = m.teacher(x)
        assert [tuple(f.shape) for f in t] == [(1, 256, 64, 64), (1, 512, 32, 32), (1, 1024, 16, 16)]
        ocbe = m.student.bottleneck
        assert tuple(ocbe.fuse1(t[0]).shape) == (1, 1024, 16, 16)   # two 3x3 s2 convs
        assert len([c for c in ocbe.fuse1.modules() if isinstance(c, torch.nn.Conv2d)]) == 2
        assert tuple(ocbe.fuse2(t[1]).shape) == (1, 1024, 16, 16)   # one 3x3 s2 conv
        fused = torch.cat([ocbe.fuse1(t[0]), ocbe.fuse2(t[1]), t[2]], 1)
        assert tuple(fused.shape) == (1, 3072, 16, 16)
        assert len(ocbe.embed) == 3 and ocbe.embed[0].conv2.stride == (2, 2)
        emb = ocbe(t)
        assert tuple(emb.shape) == (1, 2048, 8, 8)
        assert [len(s) for s in m.student.decoder.stages] == [3, 4, 6]
        s = m.student(t)
    assert [tuple(f.shape) for f in s] == [(1, 256, 64, 64), (1, 512, 32, 32), (1, 1024, 16, 16)]


@pytest.mark.parametrize("backbone, channels", [("resnet18", (64, 128, 256)),
                                                ("efficientnet_lite0", (24, 40, 112))])
@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_other_teachers_shapes(backbone, channels, size):
    m = build_rd_model(backbone, pretrained=False, image_size=size, seed=0).eval()
    x = torch.randn(2, 3, *size)
    t, s = m(x)
    h, w = size
    want = [(2, c, h // 4 // 2 ** i, w // 4 // 2 ** i) for i, c in enumerate(channels)]
    assert [tuple(f.shape) for f in t] == want
    assert [tuple(f.shape) for f in s] == want
    assert m.image_size == size and len(m.normalization) == 2


def test_teacher_is_frozen_in_eval_mode_without_autograd():
    m = build_rd_model("resnet18", pretrained=False, image_size=64, seed=0)
    m.train()
    assert m.student.training and not m.teacher.training
    assert all(not mod.training for mod in m.teacher.modules())
    assert all(not p.requires_grad for p in m.teacher.parameters())
    bn = next(mod for mod in m.teacher.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    t, s = m(torch.randn(2, 3, 64, 64))
    assert all(f.grad_fn is None and not f.requires_grad for f in t)     # no graph through the teacher
    loss = sum((1 - F.cosine_similarity(a.flatten(1), b.flatten(1))).mean() for a, b in zip(t, s))
    loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.student.parameters())
    assert torch.equal(bn.running_mean, before)                           # eval mode: stats untouched
    assert not hasattr(m.teacher, "layer4") and not hasattr(m.teacher, "fc")   # never run, trimmed


# ----------------------------------------------------------------------------- weights files
@pytest.fixture(scope="module")
def wrn_full():
    """Our untrimmed wide_resnet50_2 (layer4 and fc included) with non-default values, eval mode."""
    torch.manual_seed(1)
    full = wide_resnet50_2().eval()
    with torch.no_grad():
        for name, t in full.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) * 0.1 + (0.5 if "running_var" in name else 0.0))
    return full


@pytest.fixture(scope="module")
def wrn_state(wrn_full):
    """Its state dict: the layout of torchvision's wide_resnet50_2 weights files."""
    return wrn_full.state_dict()


def test_torchvision_layout_keys(wrn_state):
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.num_batches_tracked", "layer3.5.conv3.weight", "layer4.2.bn3.bias",
                "fc.weight", "fc.bias"):
        assert key in wrn_state
    assert tuple(wrn_state["layer1.0.conv2.weight"].shape) == (128, 128, 3, 3)   # "wide": 2x bottleneck width
    assert tuple(wrn_state["fc.weight"].shape) == (1000, 2048)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_wrn_weights_file_loads_strictly(wrn_full, wrn_state, tmp_path, suffix):
    path = tmp_path / f"wide_resnet50_2{suffix}"
    if suffix == ".pth":
        torch.save(wrn_state, path)
    else:
        save_file({k: v.contiguous() for k, v in wrn_state.items()}, str(path))
    teacher, wid = build_teacher("wide_resnet50_2", path)
    assert wid == "sha256:" + file_sha256(path)
    got = teacher.state_dict()
    for key in ("conv1.weight", "layer2.3.bn2.running_var", "layer3.5.conv3.weight"):
        assert torch.equal(got[key], wrn_state[key]), key
    assert not any(k.startswith(("layer4", "fc")) for k in got)
    # the loaded weights are the ones used by forward
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(teacher(x), wrn_full(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_wrong_weights_files_are_weights_errors(tmp_path):
    small = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), small)
    with pytest.raises(WeightsError, match="does not fit teacher 'wide_resnet50_2'"):
        build_teacher("wide_resnet50_2", small)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a weights file" * 10)
    with pytest.raises(WeightsError, match="cannot read"):
        build_teacher("resnet18", garbage)
    torn = tmp_path / "torn.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18().state_dict().items()}, str(torn))
    torn.write_bytes(torn.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="cannot read"):
        build_teacher("resnet18", torn)
    with pytest.raises(WeightsError, match="not found"):
        build_teacher("resnet18", tmp_path / "absent.pth")


def test_missing_weights_say_how_to_get_them():
    with pytest.raises(WeightsError, match="--teacher-weights PATH") as e:
        build_teacher("wide_resnet50_2", None)
    assert "torchvision" in str(e.value)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_teacher("vgg16", "random")


def test_packaged_efficientnet_lite0_weights_load():
    teacher, wid = build_teacher("efficientnet_lite0")
    assert wid.startswith("sha256:") and len(wid) == 7 + 64
    assert teacher.stage_channels == (24, 40, 112)
