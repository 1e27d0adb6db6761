"""symopt: optimisers for models written as PyTensor symbolic graphs.

>>> import symopt
>>> opt = symopt.Adam([W, b], learning_rate=1e-3)            # doctest: +SKIP
>>> train = pytensor.function([x, y], loss, updates=opt.updates(loss))  # doctest: +SKIP
"""

import os as _os

# A train step's matmuls are small (batch 128); OpenBLAS's worker threads spinning
# against each other on few cores made them 9x slower here (16 ms vs 1.75 ms for
# 128x784 @ 784x100 on 2 cores). One thread unless the user chose; only effective
# when symopt is imported before numpy (the CLI and the demo are).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .optimizer import HYPERPARAMETER_BOUNDS, TRANSFORM_SETTINGS, Optimizer, Updates
from .registry import ENTRY_POINT_GROUP, OPTIMIZERS, UnknownOptimizerError, get, register
from .rules import (
    AMSGrad,
    SGD,
    AdaDelta,
    AdaGrad,
    Adam,
    Adamax,
    AdamW,
    Lion,
    Momentum,
    NAdam,
    Nesterov,
    RAdam,
    RMSprop,
)

from . import data, masks, nn, schedules, seeds  # noqa: E402  (after the BLAS setting above)
from .function import function  # noqa: E402
from .gradcheck import check_grad  # noqa: E402
from .wrappers import EMA, Lookahead  # noqa: E402
from .train import EpochRecord, Trainer, fit  # noqa: E402
from . import checkpoint  # noqa: E402
from .checkpoint import TrainingInterrupted  # noqa: E402
from .plateau import ReduceLROnPlateau  # noqa: E402
from . import updates  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Optimizer",
    "Updates",
    "TRANSFORM_SETTINGS",
    "OPTIMIZERS",
    "ENTRY_POINT_GROUP",
    "HYPERPARAMETER_BOUNDS",
    "UnknownOptimizerError",
    "register",
    "get",
    "SGD",
    "Momentum",
    "Nesterov",
    "AdaGrad",
    "RMSprop",
    "AdaDelta",
    "Adam",
    "AdamW",
    "AMSGrad",
    "Adamax",
    "NAdam",
    "RAdam",
    "Lion",
    "data",
    "nn",
    "masks",
    "schedules",
    "seeds",
    "EMA",
    "Lookahead",
    "fit",
    "function",
    "check_grad",
    "Trainer",
    "EpochRecord",
    "checkpoint",
    "TrainingInterrupted",
    "ReduceLROnPlateau",
    "updates",
    "__version__",
]
