"""Training: the generic driver (:func:`train`), the method registry, the RD method and the
reusable epoch machinery (:mod:`.loop`) that CDD builds on."""
from .config import DEFAULT_EPOCHS, TrainConfig
from .loop import EpochStats, TeacherFeatures, batch_indices, deterministic, fit_epoch, make_adam, seed_everything
from .loss import rd_loss, rd_loss_per_image
from .methods import METHODS, PLANNED_METHODS, TrainingMethod, get_method, method_names, register_method
from . import rd as _rd  # noqa: F401  (registers "rd")
from .runner import run_training, threshold_from_scores, train

__all__ = ["train", "run_training", "TrainConfig", "DEFAULT_EPOCHS", "TrainingMethod", "register_method",
           "get_method", "method_names", "METHODS", "PLANNED_METHODS", "TeacherFeatures", "EpochStats",
           "fit_epoch", "batch_indices", "make_adam", "seed_everything", "deterministic", "rd_loss",
           "rd_loss_per_image", "threshold_from_scores"]
