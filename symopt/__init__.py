"""symopt: optimisers for models written as PyTensor symbolic graphs.

>>> import symopt
>>> opt = symopt.Adam([W, b], learning_rate=1e-3)            # doctest: +SKIP
>>> train = pytensor.function([x, y], loss, updates=opt.updates(loss))  # doctest: +SKIP
"""

from .optimizer import HYPERPARAMETER_BOUNDS, Optimizer
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

__version__ = "0.1.0"

__all__ = [
    "Optimizer",
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
    "__version__",
]
