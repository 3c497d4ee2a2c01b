"""Cross-Domain Distillation (CDD): fixed domain partition, domain students, cross-domain
aggregated targets and the global student that is deployed exactly like an RD student."""
from .aggregate import aggregate_other_domains, cross_domain_targets, mix_teacher
from .partition import cluster_partition, kmeans, make_partition, pooled_features, random_partition
from .trainer import CDDOptions, CDDResult, CDDTrainer, train_cdd
from . import method  # noqa: E402,F401  (registers training method "cdd" with cdd_engine.training)

__all__ = ["aggregate_other_domains", "cross_domain_targets", "mix_teacher", "cluster_partition", "kmeans",
           "make_partition", "pooled_features", "random_partition", "CDDOptions", "CDDResult", "CDDTrainer", "train_cdd"]
