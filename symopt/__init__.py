"""symopt: optimisers for models written as PyTensor symbolic graphs.

>>> import symopt
>>> opt = symopt.Adam([W, b], learning_rate=1e-3)            # doctest: +SKIP
>>> train = pytensor.function([x, y], loss, updates=opt.updates(loss))  # doctest: +SKIP
"""

import os as _os

# One BLAS thread unless the user chose (symopt/_threads.py says why). The variable
# reaches only BLAS libraries loaded after it is set (PyTensor's scipy-openblas32, and
# NumPy's when symopt is imported first) and every subprocess (Dask workers, benchmark
# workers); the training loops also set the count of every loaded library at run time
# with threadpoolctl (`symopt._threads.limit_blas_threads`), so importing NumPy first
# no longer undoes it.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .hyperparameter import Hyperparameter
from .optimizer import HYPERPARAMETER_BOUNDS, TRANSFORM_SETTINGS, Optimizer, Updates
from . import transforms
from .transforms import Transform
from .registry import ENTRY_POINT_GROUP, OPTIMIZERS, NotARuleError, UnknownOptimizerError, get, get_rule, register
# Each rules module's __all__ is its rule classes; the package exports them all.
from . import rules as _rules, rules_contrib as _rules_contrib, rules_modern as _rules_modern
from .rules import *  # noqa: F401,F403
from .rules_contrib import *  # noqa: F401,F403
from .rules_modern import *  # noqa: F401,F403

from . import data, masks, nn, schedules, seeds  # noqa: E402  (after the BLAS setting above)
from .function import function  # noqa: E402
from .gradcheck import check_grad  # noqa: E402
from .wrappers import EMA, Lookahead  # noqa: E402
from .rules_second import SAM, Sophia  # noqa: E402
from .lbfgs import LBFGS  # noqa: E402
from .combine import Combined, combine  # noqa: E402
from .train import EpochRecord, Trainer, fit  # noqa: E402
from . import checkpoint  # noqa: E402
from .checkpoint import TrainingInterrupted  # noqa: E402
from .plateau import EarlyStopping, MemberReduceLROnPlateau, ReduceLROnPlateau  # noqa: E402
from . import updates  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Optimizer",
    "Updates",
    "Hyperparameter",
    "Transform",
    "transforms",
    "TRANSFORM_SETTINGS",
    "OPTIMIZERS",
    "ENTRY_POINT_GROUP",
    "HYPERPARAMETER_BOUNDS",
    "UnknownOptimizerError",
    "NotARuleError",
    "register",
    "get",
    "get_rule",
    *_rules.__all__,
    *_rules_contrib.__all__,
    *_rules_modern.__all__,
    "SAM",
    "Sophia",
    "LBFGS",
    "data",
    "nn",
    "masks",
    "schedules",
    "seeds",
    "EMA",
    "Lookahead",
    "combine",
    "Combined",
    "fit",
    "function",
    "check_grad",
    "Trainer",
    "EpochRecord",
    "checkpoint",
    "TrainingInterrupted",
    "ReduceLROnPlateau",
    "MemberReduceLROnPlateau",
    "EarlyStopping",
    "updates",
    "__version__",
]
