"""Cross-domain targets: a student never supplies the target of its own domain's images."""
import pytest
import torch
import torch.nn as nn

from cdd_engine.cdd.aggregate import aggregate_other_domains, cross_domain_targets, gate_teacher, mix_teacher

SHAPES = [(4, 6, 5), (5, 3, 2)]  # (C, h, w) per scale, odd sizes on purpose; C >= K


class ConstantStudent(nn.Module):
    """Returns, for every image and pixel, a feature vector that identifies the student: one-hot
    on channel ``ident`` (scaled so that normalisation matters)."""

    def __init__(self, ident: int, scale: float) -> None:
        super().__init__()
        self.ident, self.scale = ident, scale

    def forward(self, feats):
        out = []
        for f, (c, h, w) in zip(feats, SHAPES):
            x = torch.zeros(f.shape[0], c, h, w, dtype=f.dtype)
            x[:, self.ident] = self.scale
            out.append(x)
        return out


def _teacher(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *s, generator=g) for s in SHAPES]


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("reduce", ["mean", "median"])
def test_own_domain_never_supplies_the_target(k, reduce):
    students = [ConstantStudent(j, scale=1.0 + 3 * j) for j in range(k)]
    domains = torch.tensor([j % k for j in range(7)])
    targets = cross_domain_targets(students, _teacher(7), domains, reduce=reduce)
    for t in targets:
        for b, d in enumerate(domains.tolist()):
            own = t[b, d]
            assert torch.all(own == 0), f"image {b} of domain {d} got a contribution from its own student"
            others = [j for j in range(k) if j != d]
            # every other student contributes; after normalisation each is a unit one-hot
            if reduce == "mean":
                for j in others:
                    assert torch.allclose(t[b, j], torch.full_like(t[b, j], 1.0 / (k - 1)))


def test_mean_matches_explicit_leave_one_out_on_random_features():
    g = torch.Generator().manual_seed(1)
    k, b = 3, 5
    outputs = [[torch.randn(b, *s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in range(k)]
    domains = torch.tensor([0, 2, 1, 1, 0])
    got = aggregate_other_domains(outputs, domains, "mean", normalize=False)
    for s in range(len(SHAPES)):
        for i, d in enumerate(domains.tolist()):
            want = sum(outputs[j][s][i] for j in range(k) if j != d) / (k - 1)
            torch.testing.assert_close(got[s][i], want, rtol=1e-12, atol=1e-12)


def test_median_matches_explicit_leave_one_out_on_random_features():
    g = torch.Generator().manual_seed(2)
    k, b = 4, 6
    outputs = [[torch.randn(b, *s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in range(k)]
    domains = torch.tensor([3, 0, 1, 2, 2, 0])
    got = aggregate_other_domains(outputs, domains, "median", normalize=True)
    for s in range(len(SHAPES)):
        normed = [nn.functional.normalize(o[s], dim=1) for o in outputs]
        for i, d in enumerate(domains.tolist()):
            others = torch.stack([normed[j][i] for j in range(k) if j != d])
            torch.testing.assert_close(got[s][i], others.median(0).values, rtol=1e-12, atol=1e-12)  # 3 -> middle


def test_teacher_share_mixes_normalised_teacher():
    students = [ConstantStudent(j, 2.0) for j in range(3)]
    teacher = _teacher(3, seed=5)
    domains = torch.tensor([0, 1, 2])
    pure = cross_domain_targets(students, teacher, domains)
    mixed = cross_domain_targets(students, teacher, domains, teacher_share=0.25)
    for p, m, t in zip(pure, mixed, teacher):
        torch.testing.assert_close(m, 0.75 * p + 0.25 * nn.functional.normalize(t, dim=1))
    full = mix_teacher(pure, teacher, 1.0)
    torch.testing.assert_close(full[0], nn.functional.normalize(teacher[0], dim=1))


@pytest.mark.parametrize("keep", [0.3, 0.75])
def test_teacher_gate_takes_the_teacher_where_the_aggregate_is_closest(keep):
    g = torch.Generator().manual_seed(7)
    b = 3
    targets = [nn.functional.normalize(torch.randn(b, *s, generator=g, dtype=torch.float64), dim=1) for s in SHAPES]
    teacher = [torch.randn(b, *s, generator=g, dtype=torch.float64) * 3 for s in SHAPES]
    got = gate_teacher(targets, teacher, keep)
    for t, f, o in zip(targets, teacher, got):
        fn = nn.functional.normalize(f, dim=1)
        for i in range(b):
            # explicit: rank this image's pixels by the cosine distance of target to teacher
            d = (1 - (t[i] * fn[i]).sum(0)).flatten()
            n_keep = int(keep * (d.numel() - 1)) + 1  # numpy's "lower" quantile index, plus itself
            closest = torch.zeros(d.numel(), dtype=torch.bool)
            closest[d.argsort()[:n_keep]] = True
            closest = closest.view(t.shape[2:])
            torch.testing.assert_close(o[i][:, closest], fn[i][:, closest], rtol=0, atol=0)
            torch.testing.assert_close(o[i][:, ~closest], t[i][:, ~closest], rtol=0, atol=0)
            assert 0 < int(closest.sum()) < d.numel()


def test_teacher_gate_ends_and_batch_independence():
    students = [ConstantStudent(j, 2.0) for j in range(3)]
    teacher = _teacher(6, seed=3)
    domains = torch.tensor([0, 1, 2, 2, 1, 0])
    pure = cross_domain_targets(students, teacher, domains)
    assert all(torch.equal(a, b) for a, b in zip(pure, cross_domain_targets(students, teacher, domains,
                                                                               teacher_gate=0.0)))
    full = cross_domain_targets(students, teacher, domains, teacher_gate=1.0)
    for f, t in zip(full, teacher):
        torch.testing.assert_close(f, nn.functional.normalize(t, dim=1))
    # per image: the targets of images 2..4 do not change when they are scored as their own batch
    whole = cross_domain_targets(students, teacher, domains, teacher_gate=0.6)
    part = cross_domain_targets(students, [t[2:5] for t in teacher], domains[2:5], teacher_gate=0.6)
    for w, p in zip(whole, part):
        torch.testing.assert_close(w[2:5], p, rtol=0, atol=0)
    with pytest.raises(ValueError, match="teacher_gate"):
        gate_teacher(pure, teacher, -0.1)


def test_targets_carry_no_gradient():
    lin = nn.Conv2d(4, 4, 1)
    students = [lambda f, j=j: [lin(f[0]) * (j + 1), f[1] * (j + 1)] for j in range(2)]
    feats = [torch.randn(2, 4, 5, 5), torch.randn(2, 3, 3, 2)]
    t = cross_domain_targets(students, feats, torch.tensor([0, 1]))
    assert not t[0].requires_grad


def test_bad_inputs_are_clear_errors():
    outputs = [[torch.randn(2, 3, 4, 4)] for _ in range(3)]
    with pytest.raises(ValueError, match="reduce must be one of"):
        aggregate_other_domains(outputs, torch.tensor([0, 1]), "max")
    with pytest.raises(ValueError, match="at least 2 domain students"):
        aggregate_other_domains(outputs[:1], torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="2 images"):
        aggregate_other_domains(outputs, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        aggregate_other_domains(outputs, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integer tensor"):
        aggregate_other_domains(outputs, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="teacher_share"):
        mix_teacher([outputs[0][0]], [outputs[1][0]], 1.5)
