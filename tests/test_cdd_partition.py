"""The CDD domain partition: disjoint, complete, non-empty, deterministic per seed."""
import pytest
import torch

from cdd_engine.cdd.partition import (cluster_partition, kmeans, make_partition, pooled_features,
                                      random_partition)


def _check_partition(domains: torch.Tensor, n: int, k: int) -> None:
    # one id per image (complete, and disjoint by construction of an id vector), all K domains used
    assert domains.shape == (n,) and domains.dtype == torch.int64
    assert int(domains.min()) == 0 and int(domains.max()) == k - 1
    assert torch.bincount(domains, minlength=k).min() > 0


@pytest.mark.parametrize("n,k", [(10, 2), (17, 3), (101, 5)])
def test_random_partition_is_balanced_and_deterministic(n, k):
    a = random_partition(n, k, seed=3)
    _check_partition(a, n, k)
    sizes = torch.bincount(a, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    assert torch.equal(a, random_partition(n, k, seed=3))
    assert not torch.equal(a, random_partition(n, k, seed=4))


def _blobs(seed=0, per=12, d=6):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0] * d, [8.0] * d, [-8.0] + [8.0] * (d - 1)])
    x = torch.cat([c + torch.randn(per, d, generator=g) for c in centers])
    truth = torch.arange(3).repeat_interleave(per)
    return x, truth


def _same_grouping(a: torch.Tensor, b: torch.Tensor) -> bool:
    # equal up to a relabelling of the clusters
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("balanced", [True, False])
def test_kmeans_finds_separated_blobs(balanced):
    x, truth = _blobs()
    ids = kmeans(x, 3, seed=0, balanced=balanced)
    _check_partition(ids, len(x), 3)
    assert _same_grouping(ids, truth)
    assert torch.equal(ids, kmeans(x, 3, seed=0, balanced=balanced))


def test_balanced_kmeans_caps_domain_sizes():
    x, _ = _blobs(per=10)
    x = torch.cat([x, x[:1] + 0.01 * torch.randn(14, x.shape[1], generator=torch.Generator().manual_seed(1))])
    ids = cluster_partition(x, 4, seed=2, balanced=True)
    _check_partition(ids, len(x), 4)
    sizes = torch.bincount(ids, minlength=4)
    assert sizes.max() - sizes.min() <= 1


def test_unbalanced_kmeans_keeps_every_domain_non_empty():
    # 2 distinct points repeated: k=3 must still give 3 non-empty clusters
    x = torch.cat([torch.zeros(5, 2), torch.ones(5, 2)])
    _check_partition(kmeans(x, 3, seed=0, balanced=False), 10, 3)


def test_pooled_features_shapes_and_modes():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 5, 4, 4, generator=g)]
    assert pooled_features(feats, "mean").shape == (4, 8)
    assert pooled_features(feats, "max").shape == (4, 8)
    both = pooled_features(feats, "meanmax")
    assert both.shape == (4, 16)
    assert torch.allclose(both[:, :3], feats[0].mean((2, 3)))
    assert torch.allclose(both[:, 3:6], feats[0].amax((2, 3)))
    with pytest.raises(ValueError, match="pooling"):
        pooled_features(feats, "sum")


def test_make_partition_dispatch_and_errors():
    x, _ = _blobs()
    _check_partition(make_partition("cluster", len(x), 3, 0, descriptors=x), len(x), 3)
    _check_partition(make_partition("random", 7, 2, 0), 7, 2)
    with pytest.raises(ValueError, match="partition must be one of"):
        make_partition("kmeans", 7, 2, 0)
    with pytest.raises(ValueError, match="needs image descriptors"):
        make_partition("cluster", 7, 2, 0)
    with pytest.raises(ValueError, match="descriptors for 36"):
        make_partition("cluster", 10, 2, 0, descriptors=x)
    with pytest.raises(ValueError, match="at least 2 domains"):
        random_partition(10, 1, 0)
    with pytest.raises(ValueError, match="cannot split 3"):
        random_partition(3, 4, 0)
    with pytest.raises(TypeError, match="must be an int"):
        random_partition(10, 2.0, 0)
