"""Check symopt's update rules against ``torch.optim``, step for step, in float64.

Purpose
-------
symopt promises that every rule computes the algorithm documented for the matching
``torch.optim`` class, to 1e-6 relative in float64 over 30 steps with the same
hyperparameters, and that ``weight_decay`` is an L2 term added to the gradient
(torch semantics) on every rule except AdamW (and Lion), where it is decoupled.
This script is the evidence. For every rule in ``symopt.OPTIMIZERS`` that has a torch
counterpart, and several hyperparameter settings of each (the defaults, a larger
learning rate, ``weight_decay > 0``, and every option torch also has: ``amsgrad``,
``centered``, RMSprop ``momentum > 0``, Nesterov), it

1. builds the same small non-convex problem twice: a tanh layer with a matrix
   ``W`` (5x8) and a vector ``b`` (8) as parameters, read out by a fixed vector,
   squared error on a fixed random batch of 32; once as a PyTensor graph, once in
   torch (the loss is written twice, not shared);
2. trains both from the same initial parameters for ``--steps`` steps: symopt
   through one compiled ``pytensor.function`` with ``opt.updates(loss)``, torch with
   ``torch.optim.<Class>(..., foreach=False)`` and gradients from torch autograd;
3. records, after every step, the largest element-wise relative difference of the
   parameters, ``max |p_symopt - p_torch| / |p_torch|``, and its maximum over all
   steps. A setting passes when that maximum is <= 1e-6. As a more sensitive
   diagnostic (it is not part of the pass criterion) it also records the relative
   difference of the distance travelled, ``max |d_symopt - d_torch| / max |d_torch|``
   with ``d = p_t - p_0``, which does not shrink when the learning rate is small.
4. runs a few negative controls, pairs that must differ (symopt Adam's L2 weight
   decay against torch AdamW, symopt AdamW against torch Adam with L2, Adam
   ``beta1_decay``, RMSprop ``epsilon_inside_sqrt``, Nesterov against heavy ball);
   if any of them came out within the tolerance the check would be too blunt to
   mean anything, and the script fails. (Only run when all rules are selected.)

Mapping: sgd->SGD; momentum->SGD(momentum, dampening=0); nesterov->SGD(nesterov=True);
adagrad->Adagrad(lr_decay=0, initial_accumulator_value=0); adafactor->Adafactor; rmsprop->RMSprop (symopt
``rho`` is torch ``alpha``); adadelta->Adadelta; adam, amsgrad->Adam(amsgrad);
adamw->AdamW; adamax->Adamax; nadam->NAdam; radam->RAdam; rprop->Rprop; asgd->ASGD
(AdaGrad's ``initial_accumulator_value`` and ``lr_decay`` are compared too). torch 2.13.0 has no
``torch.optim.Lion``, so lion is compared with an independent implementation written
here from Chen et al. (2023), "Symbolic Discovery of Optimization Algorithms",
Algorithm 2 (used only if ``torch.optim`` has no ``Lion``; the JSON says which).
Every hyperparameter, defaults included, is passed to both sides explicitly, because
some of symopt's defaults differ from torch's (RMSprop, Adadelta).

Adam/AdamW/AMSGrad ``epsilon_hat=True`` (TF1/Keras placement, epsilon added to sqrt(v)
before the bias correction) has no torch option; it is compared with torch's Adam/AdamW
whose ``eps`` is set to ``epsilon_hat / sqrt(1 - beta2^t)`` before step ``t``, the same
update (Kingma & Ba, section 2). Not checked here, because torch has no counterpart:
Adam/AdamW/AMSGrad ``beta1_decay != 1``, ``max_norm_axes`` (torch.optim has no max-norm
constraint), EMA's ``overwrite_frequency`` (a Keras option), AdaGrad/RMSprop ``epsilon_inside_sqrt=True`` (and, in the other
direction, torch-only options such as NAdam/RAdam ``decoupled_weight_decay``,
SGD ``dampening``, ``maximize``). Rules registered in
``symopt.OPTIMIZERS`` that are not in the mapping (plug-ins) are listed as skipped.

torch keeps step counters and NAdam's ``mu_product`` in the default dtype, so the
script sets ``torch.set_default_dtype(torch.float64)``.

How to run
----------
torch is not a runtime dependency of symopt; install the benchmark extras (a CPU
build of torch is enough)::

    pip install -e '.[bench]'          # or: pip install torch==2.13.0
    python benchmarks/validate_torch.py [--steps 30] [--out benchmarks/results/validate_torch.json]

It prints a table (rule, setting, max relative error, pass/fail at 1e-6), writes the
JSON report to ``--out`` and exits 1 if any setting fails (or a negative control is
not detected). ``--rules adam nadam`` restricts the run to some rules. Without torch
it prints how to install it, writes nothing, and exits 0 with "skipped".
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCE = 1e-6
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "validate_torch.json"

# Problem size: x is (BATCH, N_IN), W is (N_IN, N_HIDDEN), b is (N_HIDDEN,).
BATCH, N_IN, N_HIDDEN = 32, 5, 8
SEED = 20240611


# ---------------------------------------------------------------------------- problem
def make_problem(seed: int = SEED) -> dict[str, np.ndarray]:
    """Fixed float64 data, readout and initial parameters (shared by both sides)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, N_IN))
    y = np.sin(2.0 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]  # a non-linear target
    v = rng.standard_normal(N_HIDDEN) / np.sqrt(N_HIDDEN)  # fixed readout
    W0 = rng.standard_normal((N_IN, N_HIDDEN)) * 0.7
    b0 = rng.standard_normal(N_HIDDEN) * 0.5
    return {"x": x, "y": y, "v": v, "W0": W0, "b0": b0}


def pytensor_loss(W, b, x, y, v):
    """Mean squared error of ``tanh(x W + b) v`` against ``y`` (PyTensor)."""
    import pytensor.tensor as pt

    out = pt.dot(pt.tanh(pt.dot(x, W) + b), v)
    return pt.mean((out - y) ** 2)


def torch_loss(W, b, x, y, v):
    """The same function as :func:`pytensor_loss`, written independently in torch."""
    import torch

    out = torch.tanh(x @ W + b) @ v
    return torch.mean((out - y) ** 2)


# ---------------------------------------------------------------------------- Lion reference
def make_lion_reference(torch: Any) -> type:
    """Lion with decoupled weight decay, from Chen et al. (2023), Algorithm 2.

    Written from the paper, not from symopt::

        c_t     = beta1 * m_{t-1} + (1 - beta1) * g_t
        theta_t = theta_{t-1} - eta * (sign(c_t) + lambda * theta_{t-1})
        m_t     = beta2 * m_{t-1} + (1 - beta2) * g_t
    """

    class LionReference(torch.optim.Optimizer):
        def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
            super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                lr, wd = group["lr"], group["weight_decay"]
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["m"] = torch.zeros_like(p)
                    m, g = state["m"], p.grad
                    c = beta1 * m + (1 - beta1) * g
                    theta_prev = p.clone()
                    p.copy_(theta_prev - lr * (torch.sign(c) + wd * theta_prev))
                    m.copy_(beta2 * m + (1 - beta2) * g)

    return LionReference


# ---------------------------------------------------------------------------- cases
# Settings per rule. Each is (name, symopt overrides); unmentioned hyperparameters
# take symopt's defaults, and all of them are passed to torch explicitly.
SETTINGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "sgd": [
        ("defaults", {}),
        ("lr=0.1", {"learning_rate": 0.1}),
        ("lr=0.1, wd=0.05", {"learning_rate": 0.1, "weight_decay": 0.05}),
    ],
    "momentum": [
        ("defaults", {}),
        ("lr=0.05, momentum=0.5", {"learning_rate": 0.05, "momentum": 0.5}),
        ("lr=0.05, wd=0.05", {"learning_rate": 0.05, "weight_decay": 0.05}),
    ],
    "nesterov": [
        ("defaults", {}),
        ("lr=0.05, momentum=0.5", {"learning_rate": 0.05, "momentum": 0.5}),
        ("lr=0.05, wd=0.05", {"learning_rate": 0.05, "weight_decay": 0.05}),
    ],
    "adagrad": [
        ("defaults", {}),
        ("lr=0.1, eps=1e-6", {"learning_rate": 0.1, "epsilon": 1e-6}),
        ("lr=0.1, wd=0.05", {"learning_rate": 0.1, "weight_decay": 0.05}),
        ("lr=0.1, initial_accumulator_value=0.5", {"learning_rate": 0.1, "initial_accumulator_value": 0.5}),
        ("lr=0.1, lr_decay=0.05", {"learning_rate": 0.1, "lr_decay": 0.05}),
        ("lr=0.1, init=0.1, lr_decay=0.02, wd=0.05",
         {"learning_rate": 0.1, "initial_accumulator_value": 0.1, "lr_decay": 0.02, "weight_decay": 0.05}),
    ],
    "rmsprop": [
        ("defaults", {}),
        ("lr=0.01, rho=0.99", {"learning_rate": 0.01, "rho": 0.99}),
        ("centered", {"learning_rate": 0.01, "centered": True}),
        ("momentum=0.9", {"learning_rate": 0.01, "momentum": 0.9}),
        ("centered, momentum=0.9", {"learning_rate": 0.01, "centered": True, "momentum": 0.9}),
        ("lr=0.01, wd=0.05", {"learning_rate": 0.01, "weight_decay": 0.05}),
        ("centered, momentum=0.5, wd=0.05",
         {"learning_rate": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.05}),
    ],
    "adadelta": [
        ("defaults", {}),
        ("rho=0.9, eps=1e-4", {"rho": 0.9, "epsilon": 1e-4}),
        ("lr=0.5, wd=0.05", {"learning_rate": 0.5, "weight_decay": 0.05}),
    ],
    "adam": [
        ("defaults", {}),
        ("lr=0.02, betas=(0.8, 0.99)", {"learning_rate": 0.02, "beta1": 0.8, "beta2": 0.99}),
        ("amsgrad", {"learning_rate": 0.02, "amsgrad": True}),
        ("lr=0.02, wd=0.05", {"learning_rate": 0.02, "weight_decay": 0.05}),
        ("amsgrad, wd=0.05", {"learning_rate": 0.02, "amsgrad": True, "weight_decay": 0.05}),
        ("epsilon_hat, eps=1e-3", {"learning_rate": 0.02, "epsilon_hat": True, "epsilon": 1e-3}),
    ],
    "amsgrad": [
        ("defaults", {}),
        ("lr=0.02, betas=(0.8, 0.99)", {"learning_rate": 0.02, "beta1": 0.8, "beta2": 0.99}),
        ("lr=0.02, wd=0.05", {"learning_rate": 0.02, "weight_decay": 0.05}),
        ("epsilon_hat, eps=1e-3", {"learning_rate": 0.02, "epsilon_hat": True, "epsilon": 1e-3}),
    ],
    "adamw": [
        ("defaults (wd=0.01)", {}),
        ("wd=0", {"weight_decay": 0.0}),
        ("lr=0.02, wd=0.1", {"learning_rate": 0.02, "weight_decay": 0.1}),
        ("amsgrad, lr=0.02, wd=0.1", {"learning_rate": 0.02, "weight_decay": 0.1, "amsgrad": True}),
        ("epsilon_hat, eps=1e-3, wd=0.1", {"learning_rate": 0.02, "weight_decay": 0.1, "epsilon_hat": True, "epsilon": 1e-3}),
    ],
    "adamax": [
        ("defaults", {}),
        ("lr=0.02, betas=(0.8, 0.99)", {"learning_rate": 0.02, "beta1": 0.8, "beta2": 0.99}),
        ("lr=0.02, wd=0.05", {"learning_rate": 0.02, "weight_decay": 0.05}),
    ],
    "nadam": [
        ("defaults", {}),
        ("lr=0.02, momentum_decay=0.05", {"learning_rate": 0.02, "momentum_decay": 0.05}),
        ("lr=0.02, betas=(0.8, 0.99)", {"learning_rate": 0.02, "beta1": 0.8, "beta2": 0.99}),
        ("lr=0.02, wd=0.05", {"learning_rate": 0.02, "weight_decay": 0.05}),
    ],
    "radam": [
        # beta2=0.999: rho_t > 5 from step 6; beta2=0.9: rho_inf = 19, rectified from step 3.
        ("defaults", {}),
        ("lr=0.02, beta2=0.9", {"learning_rate": 0.02, "beta2": 0.9}),
        ("lr=0.02, wd=0.05", {"learning_rate": 0.02, "weight_decay": 0.05}),
    ],
    "lion": [
        ("defaults", {}),
        ("lr=3e-3, betas=(0.95, 0.98)", {"learning_rate": 3e-3, "beta1": 0.95, "beta2": 0.98}),
        ("lr=3e-3, wd=1.0 (decoupled)", {"learning_rate": 3e-3, "weight_decay": 1.0}),
    ],
    # symopt/rules_contrib.py
    "adafactor": [
        ("defaults", {}),
        ("lr=0.05, beta2_decay=-0.5, eps=(1e-6, 1e-2), d=1.2",
         {"learning_rate": 0.05, "beta2_decay": -0.5, "epsilon1": 1e-6, "epsilon2": 1e-2, "d": 1.2}),
        ("lr=0.05, wd=0.2 (decoupled)", {"learning_rate": 0.05, "weight_decay": 0.2}),
    ],
    # Muon trains W only (b stays fixed): both torch and symopt refuse vectors. W is 5x8
    # (wide); the transposed branch for tall matrices is covered by
    # tests/test_rules_contrib.py against NumPy.
    "muon": [
        ("defaults", {}),
        ("lr=0.02, momentum=0.9, wd=0.05", {"learning_rate": 0.02, "momentum": 0.9, "weight_decay": 0.05}),
        ("nesterov=False, lr=0.02", {"learning_rate": 0.02, "nesterov": False}),
        ("match_rms_adamw, lr=0.02, eps=1e-3", {"learning_rate": 0.02, "adjust_lr_fn": "match_rms_adamw", "epsilon": 1e-3}),
        ("ns_steps=3, ns_coefficients=(2, -1.5, 0.5)",
         {"learning_rate": 0.02, "ns_steps": 3, "ns_coefficients": (2.0, -1.5, 0.5)}),
    ],
    # Rules of symopt/rules_modern.py with a torch.optim reference.
    "rprop": [
        ("defaults", {}),
        ("lr=0.05, etas=(0.3, 1.5)", {"learning_rate": 0.05, "eta_minus": 0.3, "eta_plus": 1.5}),
        ("lr=0.05, step sizes in [1e-3, 0.06]", {"learning_rate": 0.05, "step_size_min": 1e-3, "step_size_max": 0.06}),
        ("lr=0.05, wd=0.05", {"learning_rate": 0.05, "weight_decay": 0.05}),
    ],
    "asgd": [
        ("defaults", {}),
        ("lr=0.1, lambd=0.05, alpha=0.6", {"learning_rate": 0.1, "lambd": 0.05, "alpha": 0.6}),
        ("lr=0.1, t0=10 (averaging from step 12)", {"learning_rate": 0.1, "t0": 10.0}),
        ("lr=0.1, t0=3.5, lambd=0.01, wd=0.05",
         {"learning_rate": 0.1, "t0": 3.5, "lambd": 0.01, "weight_decay": 0.05}),
    ],
}
#: Rules that optimise matrices only: W is trained, b stays at its initial value.
MATRIX_ONLY = {"muon"}
#: Constructor settings that are not hyperparameters, with their defaults (torch names them the same).
CONSTRUCTOR_SETTINGS = {"muon": {"ns_steps": 5, "ns_coefficients": (3.4445, -4.7750, 2.0315), "adjust_lr_fn": None}}

# Options symopt has and torch does not: not compared here.
SKIPPED_OPTIONS = {
    "adam": "beta1_decay != 1 (the Adam preprint's lambda) has no torch.optim counterpart",
    "adamw": "beta1_decay != 1 has no torch.optim counterpart",
    "amsgrad": "beta1_decay != 1 has no torch.optim counterpart",
    "adagrad": "epsilon_inside_sqrt=True (sqrt(s + eps)) has no torch.optim counterpart",
    "rmsprop": "epsilon_inside_sqrt=True (sqrt(v + eps)) has no torch.optim counterpart",
}


# Negative controls: pairs that must NOT match. Each is (name, symopt rule, symopt
# overrides, torch-side rule, torch-side overrides). If one of them came out within
# the tolerance the comparison would be too blunt to mean anything, so the script
# fails. They also show that coupled and decoupled weight decay are told apart.
NEGATIVE_CONTROLS: list[tuple[str, str, dict[str, Any], str, dict[str, Any]]] = [
    ("symopt adam wd=0.05 (L2) vs torch AdamW wd=0.05 (decoupled)",
     "adam", {"learning_rate": 0.02, "weight_decay": 0.05}, "adamw", {"learning_rate": 0.02, "weight_decay": 0.05}),
    ("symopt adamw wd=0.1 (decoupled) vs torch Adam wd=0.1 (L2)",
     "adamw", {"learning_rate": 0.02, "weight_decay": 0.1}, "adam", {"learning_rate": 0.02, "weight_decay": 0.1}),
    ("symopt adam epsilon_hat, eps=1e-3 vs torch Adam eps=1e-3 (constant)",
     "adam", {"learning_rate": 0.02, "epsilon_hat": True, "epsilon": 1e-3}, "adam", {"learning_rate": 0.02, "epsilon": 1e-3}),
    ("symopt adam beta1_decay=0.99 vs torch Adam",
     "adam", {"learning_rate": 0.02, "beta1_decay": 0.99}, "adam", {"learning_rate": 0.02}),
    ("symopt rmsprop epsilon_inside_sqrt, eps=1e-4 vs torch RMSprop eps=1e-4",
     "rmsprop", {"learning_rate": 0.01, "epsilon": 1e-4, "epsilon_inside_sqrt": True},
     "rmsprop", {"learning_rate": 0.01, "epsilon": 1e-4, "epsilon_inside_sqrt": False}),
    ("symopt nesterov vs torch SGD(momentum, nesterov=False)",
     "nesterov", {"learning_rate": 0.05}, "momentum", {"learning_rate": 0.05}),
    ("symopt adagrad initial_accumulator_value=0.5 vs torch Adagrad with 0",
     "adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.5}, "adagrad", {"learning_rate": 0.1}),
    ("symopt rprop eta_plus=1.5 vs torch Rprop etas=(0.5, 1.2)",
     "rprop", {"learning_rate": 0.05, "eta_plus": 1.5}, "rprop", {"learning_rate": 0.05}),
]


def torch_optimizer(torch: Any, rule: str, hp: dict[str, Any], params: list[Any]) -> tuple[Any, str, dict[str, Any]]:
    """The torch optimiser matching symopt ``rule`` with full hyperparameters ``hp``.

    Returns (optimizer, description of the reference, torch keyword arguments).
    """
    optim = torch.optim
    lr, wd = hp["learning_rate"], hp["weight_decay"]
    if rule in ("sgd", "momentum", "nesterov"):
        kw = {"lr": lr, "weight_decay": wd, "momentum": hp.get("momentum", 0.0), "dampening": 0.0,
              "nesterov": rule == "nesterov", "foreach": False}
        return optim.SGD(params, **kw), "torch.optim.SGD", kw
    if rule == "adagrad":
        kw = {"lr": lr, "lr_decay": hp["lr_decay"], "weight_decay": wd,
              "initial_accumulator_value": hp["initial_accumulator_value"], "eps": hp["epsilon"], "foreach": False}
        return optim.Adagrad(params, **kw), "torch.optim.Adagrad", kw
    if rule == "rmsprop":
        kw = {"lr": lr, "alpha": hp["rho"], "eps": hp["epsilon"], "weight_decay": wd,
              "momentum": hp["momentum"], "centered": hp["centered"], "foreach": False}
        return optim.RMSprop(params, **kw), "torch.optim.RMSprop", kw
    if rule == "adadelta":
        kw = {"lr": lr, "rho": hp["rho"], "eps": hp["epsilon"], "weight_decay": wd, "foreach": False}
        return optim.Adadelta(params, **kw), "torch.optim.Adadelta", kw
    if rule in ("adam", "amsgrad", "adamw"):
        kw = {"lr": lr, "betas": (hp["beta1"], hp["beta2"]), "eps": hp["epsilon"], "weight_decay": wd,
              "amsgrad": hp["amsgrad"], "foreach": False}
        cls = optim.AdamW if rule == "adamw" else optim.Adam
        return cls(params, **kw), f"torch.optim.{cls.__name__}", kw
    if rule == "adamax":
        kw = {"lr": lr, "betas": (hp["beta1"], hp["beta2"]), "eps": hp["epsilon"], "weight_decay": wd,
              "foreach": False}
        return optim.Adamax(params, **kw), "torch.optim.Adamax", kw
    if rule == "nadam":
        kw = {"lr": lr, "betas": (hp["beta1"], hp["beta2"]), "eps": hp["epsilon"], "weight_decay": wd,
              "momentum_decay": hp["momentum_decay"], "decoupled_weight_decay": False, "foreach": False}
        return optim.NAdam(params, **kw), "torch.optim.NAdam", kw
    if rule == "radam":
        kw = {"lr": lr, "betas": (hp["beta1"], hp["beta2"]), "eps": hp["epsilon"], "weight_decay": wd,
              "decoupled_weight_decay": False, "foreach": False}
        return optim.RAdam(params, **kw), "torch.optim.RAdam", kw
    if rule == "lion":
        kw = {"lr": lr, "betas": (hp["beta1"], hp["beta2"]), "weight_decay": wd}
        if hasattr(optim, "Lion"):
            kw["foreach"] = False
            return optim.Lion(params, **kw), "torch.optim.Lion", kw
        ref = make_lion_reference(torch)
        return ref(params, **kw), "independent Lion from Chen et al. 2023, Algorithm 2 (torch.optim has no Lion)", kw
    if rule == "adafactor":  # symopt's epsilon1=0 is torch's None: the dtype's machine epsilon
        kw = {"lr": lr, "beta2_decay": hp["beta2_decay"], "eps": (hp["epsilon1"] or None, hp["epsilon2"]),
              "d": hp["d"], "weight_decay": wd, "foreach": False}
        return optim.Adafactor(params, **kw), "torch.optim.Adafactor", kw
    if rule == "muon":
        kw = {"lr": lr, "weight_decay": wd, "momentum": hp["momentum"], "nesterov": hp["nesterov"], "eps": hp["epsilon"],
              "ns_coefficients": tuple(hp["ns_coefficients"]), "ns_steps": hp["ns_steps"], "adjust_lr_fn": hp["adjust_lr_fn"]}
        return (optim.Muon(params, **kw),
                "torch.optim.Muon with its Newton-Schulz iteration in float64 (Tensor.bfloat16 patched to a float64 copy)", kw)
    if rule == "rprop":
        kw = {"lr": lr, "etas": (hp["eta_minus"], hp["eta_plus"]),
              "step_sizes": (hp["step_size_min"], hp["step_size_max"]), "foreach": False}
        # torch's Rprop has no weight_decay: symopt's L2 term enters the torch loss (run_torch).
        note = {"l2_in_loss": wd} if wd else {}
        return optim.Rprop(params, **kw), "torch.optim.Rprop", {**kw, **note}
    if rule == "asgd":
        kw = {"lr": lr, "lambd": hp["lambd"], "alpha": hp["alpha"], "t0": hp["t0"], "weight_decay": wd,
              "foreach": False}
        return optim.ASGD(params, **kw), "torch.optim.ASGD", kw
    raise KeyError(rule)


# ---------------------------------------------------------------------------- runs
def run_symopt(rule: str, kwargs: dict[str, Any], data: dict[str, np.ndarray], steps: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Parameters (W, b) and the loss after each of ``steps`` compiled symopt steps."""
    import pytensor
    import pytensor.tensor as pt

    import symopt

    W = pytensor.shared(data["W0"].copy(), name="W")
    b = pytensor.shared(data["b0"].copy(), name="b")
    x = pt.dmatrix("x")
    y = pt.dvector("y")
    loss = pytensor_loss(W, b, x, y, pt.constant(data["v"]))
    opt = symopt.get(rule)([W] if rule in MATRIX_ONLY else [W, b], **kwargs)
    train = pytensor.function([x, y], loss, updates=opt.updates(loss))
    out = []
    for _ in range(steps):
        value = float(train(data["x"], data["y"]))
        out.append((W.get_value().copy(), b.get_value().copy(), value))
    return out


def run_torch(torch: Any, rule: str, hp: dict[str, Any], data: dict[str, np.ndarray], steps: int,
              bfloat16: bool = False):
    """The same with torch.optim (or the Lion reference) and torch autograd.

    torch.optim.Muon casts its Newton-Schulz input to bfloat16 (8 significant bits), which
    no float64 comparison survives; unless ``bfloat16`` is true, ``Tensor.bfloat16`` returns
    a float64 copy during the run, so torch's own iteration runs in float64.
    """
    W = torch.tensor(data["W0"].copy(), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(data["b0"].copy(), dtype=torch.float64, requires_grad=True)
    x, y, v = (torch.tensor(data[k], dtype=torch.float64) for k in ("x", "y", "v"))
    opt, reference, kw = torch_optimizer(torch, rule, hp, [W] if rule in MATRIX_ONLY else [W, b])
    epsilon_hat = bool(hp.get("epsilon_hat")) and rule in ("adam", "amsgrad", "adamw")
    if epsilon_hat:
        reference += " with eps = epsilon_hat / sqrt(1 - beta2**t) set before step t"
    if bfloat16:
        reference = reference.split(" with ")[0] + " as shipped (bfloat16 Newton-Schulz)"
    out = []
    cast = torch.Tensor.bfloat16
    try:
        if rule == "muon" and not bfloat16:
            # a copy, as the cast makes: torch divides the result in place, and without
            # nesterov it is the momentum buffer itself
            torch.Tensor.bfloat16 = lambda self, *args, **kwargs: self.clone()
        for t in range(1, steps + 1):
            if epsilon_hat:
                # Kingma & Ba, sec. 2: the epsilon_hat order of computation is the
                # default one with epsilon = epsilon_hat / sqrt(1 - beta2**t)
                for group in opt.param_groups:
                    group["eps"] = hp["epsilon"] / (1 - hp["beta2"] ** t) ** 0.5
            opt.zero_grad(set_to_none=True)
            loss = torch_loss(W, b, x, y, v)
            objective = loss
            if "l2_in_loss" in kw:  # symopt's coupled decay g + wd * p is the gradient of wd/2 * |p|^2
                objective = loss + 0.5 * kw["l2_in_loss"] * (torch.sum(W * W) + torch.sum(b * b))
            objective.backward()
            opt.step()
            out.append((W.detach().numpy().copy(), b.detach().numpy().copy(), float(loss.detach())))
    finally:
        torch.Tensor.bfloat16 = cast
    return out, reference, kw


def compare(sym, ref, data) -> dict[str, Any]:
    """Per-step element-wise relative error of the parameters, and diagnostics."""
    p0 = np.concatenate([data["W0"].ravel(), data["b0"].ravel()])
    tiny = np.finfo(np.float64).tiny
    per_step, per_step_disp, loss_err = [], [], []
    for (Ws, bs, ls), (Wt, bt, lt) in zip(sym, ref):
        ps = np.concatenate([Ws.ravel(), bs.ravel()])
        pr = np.concatenate([Wt.ravel(), bt.ravel()])
        per_step.append(float(np.max(np.abs(ps - pr) / np.maximum(np.abs(pr), tiny))))
        dr = pr - p0
        scale = float(np.max(np.abs(dr)))
        per_step_disp.append(float(np.max(np.abs((ps - p0) - dr)) / scale) if scale > 0 else 0.0)
        loss_err.append(abs(ls - lt) / max(abs(lt), tiny))
    first_bad = next((i + 1 for i, e in enumerate(per_step) if not e <= TOLERANCE), None)
    final = np.concatenate([ref[-1][0].ravel(), ref[-1][1].ravel()])
    return {
        "max_rel_error": max(per_step),
        "passed": all(e <= TOLERANCE for e in per_step),
        "first_failing_step": first_bad,
        "max_rel_error_per_step": per_step,
        "max_displacement_rel_error": max(per_step_disp),
        "displacement_rel_error_per_step": per_step_disp,
        "max_loss_rel_error": max(loss_err),
        "relative_distance_travelled": float(np.max(np.abs(final - p0)) / np.max(np.abs(p0))),
        "loss_first_last": [ref[0][2], ref[-1][2]],
    }


# ---------------------------------------------------------------------------- L-BFGS
#: symopt.LBFGS is not a registered rule (it needs the loss, re-evaluated in the step),
#: so it is checked here on the same problem: one compiled call against one
#: ``torch.optim.LBFGS.step(closure)``, full batch. The last number caps the steps: one
#: step is up to ``max_iter`` quasi-Newton iterations on this non-convex problem, and the
#: two sides' rounding (BLAS dot products in torch, NumPy's in PyTensor) grows smoothly
#: from 1e-13 by about 10x every 5 iterations (measured: 1e-6 after ~70 iterations with
#: the line search), so the comparison stops well before that, at <= 50 iterations.
LBFGS_SETTINGS = [
    ("strong_wolfe, max_iter=5, history_size=4",
     {"line_search": "strong_wolfe", "max_iter": 5, "history_size": 4}, 10),
    ("strong_wolfe, defaults", {"line_search": "strong_wolfe"}, 4),
    ("no line search, lr=0.1, max_iter=3", {"line_search": None, "learning_rate": 0.1, "max_iter": 3}, 30),
]


def run_lbfgs(torch: Any, kwargs: dict[str, Any], data: dict[str, np.ndarray], steps: int):
    """``(symopt, torch)`` lists of (W, b, loss before the step) after each of ``steps`` L-BFGS steps."""
    import pytensor
    import pytensor.tensor as pt

    import symopt

    W = pytensor.shared(data["W0"].copy(), name="W")
    b = pytensor.shared(data["b0"].copy(), name="b")
    loss = pytensor_loss(W, b, pt.constant(data["x"]), pt.constant(data["y"]), pt.constant(data["v"]))
    opt = symopt.LBFGS([W, b], **kwargs)
    train = pytensor.function([], loss, updates=opt.updates(loss))
    sym = []
    for _ in range(steps):
        value = float(train())
        sym.append((W.get_value().copy(), b.get_value().copy(), value))

    Wt = torch.tensor(data["W0"].copy(), dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(data["b0"].copy(), dtype=torch.float64, requires_grad=True)
    x, y, v = (torch.tensor(data[k], dtype=torch.float64) for k in ("x", "y", "v"))
    topt = torch.optim.LBFGS([Wt, bt], lr=kwargs.get("learning_rate", 1), max_iter=kwargs.get("max_iter", 20),
                             history_size=kwargs.get("history_size", 100), line_search_fn=kwargs.get("line_search"))

    def closure():
        topt.zero_grad()
        value = torch_loss(Wt, bt, x, y, v)
        value.backward()
        return value

    ref = []
    for _ in range(steps):
        value = float(topt.step(closure).detach())
        ref.append((Wt.detach().numpy().copy(), bt.detach().numpy().copy(), value))
    return sym, ref


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimisation steps per setting (default 30)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    parser.add_argument("--rules", nargs="*", default=None, help="only these rules (default: all)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    try:
        import torch
    except ImportError:
        print(
            "validate_torch: torch is not installed, so symopt cannot be compared with torch.optim.\n"
            "  Install the benchmark extras (CPU torch is enough):  pip install -e '.[bench]'\n"
            "  or just torch:                                         pip install torch==2.13.0\n"
            "skipped"
        )
        return 0

    import pytensor

    import symopt

    torch.set_default_dtype(torch.float64)  # torch's step counters and NAdam mu_product
    data = make_problem()

    wanted = [r.lower() for r in args.rules] if args.rules else None
    unknown = sorted(set(wanted or ()) - set(symopt.OPTIMIZERS))
    if unknown:
        parser.error(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(symopt.OPTIMIZERS)}")
    results, unmatched = [], []
    # The per-parameter rules; lbfgs (the registry's full-batch kind) has its own comparison below.
    for rule in symopt.registry.rules():
        if wanted is not None and rule not in wanted:
            continue
        if rule not in SETTINGS:
            unmatched.append(rule)
            continue
        defaults = {**symopt.get(rule).hyperparameters, **CONSTRUCTOR_SETTINGS.get(rule, {})}
        for setting, overrides in SETTINGS[rule]:
            hp = {**defaults, **overrides}
            t0 = time.perf_counter()
            sym = run_symopt(rule, overrides, data, args.steps)
            ref, reference, torch_kwargs = run_torch(torch, rule, hp, data, args.steps)
            row = {
                "rule": rule,
                "setting": setting,
                "reference": reference,
                "symopt_hyperparameters": hp,
                "torch_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in torch_kwargs.items()},
                **compare(sym, ref, data),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            results.append(row)
            status = "pass" if row["passed"] else f"FAIL (first at step {row['first_failing_step']})"
            print(f"{rule:9s} {setting:34s} {row['max_rel_error']:10.3e}  {status}", flush=True)

    # Informational, not pass/fail: how far torch's shipped bfloat16 iteration is from float64.
    muon_bfloat16 = None
    if "muon" in SETTINGS and (wanted is None or "muon" in wanted):
        hp = {**symopt.get("muon").hyperparameters, **CONSTRUCTOR_SETTINGS["muon"]}
        sym = run_symopt("muon", {}, data, args.steps)
        ref, reference, _ = run_torch(torch, "muon", hp, data, args.steps, bfloat16=True)
        muon_bfloat16 = {"reference": reference, "max_rel_error": compare(sym, ref, data)["max_rel_error"]}
        print(f"muon      vs {reference}: {muon_bfloat16['max_rel_error']:10.3e}  (information only)", flush=True)

    for setting, kwargs, cap in LBFGS_SETTINGS if wanted is None or "lbfgs" in wanted else []:
        t0 = time.perf_counter()
        sym, ref = run_lbfgs(torch, kwargs, data, min(args.steps, cap))
        row = {"rule": "lbfgs", "setting": setting, "reference": "torch.optim.LBFGS (one step(closure) per call)",
               "symopt_hyperparameters": kwargs, "torch_kwargs": {}, **compare(sym, ref, data),
               "seconds": round(time.perf_counter() - t0, 3)}
        results.append(row)
        status = "pass" if row["passed"] else f"FAIL (first at step {row['first_failing_step']})"
        print(f"{'lbfgs':9s} {setting:34s} {row['max_rel_error']:10.3e}  {status}", flush=True)

    controls = []
    if wanted is None:
        for name, sym_rule, sym_kw, ref_rule, ref_kw in NEGATIVE_CONTROLS:
            if sym_rule not in symopt.OPTIMIZERS or ref_rule not in SETTINGS:
                continue
            sym = run_symopt(sym_rule, sym_kw, data, args.steps)
            hp = {**symopt.get(ref_rule).hyperparameters, **ref_kw}
            ref, reference, _ = run_torch(torch, ref_rule, hp, data, args.steps)
            err = compare(sym, ref, data)["max_rel_error"]
            controls.append({"control": name, "reference": reference, "max_rel_error": err,
                             "detected": not err <= TOLERANCE})
            print(f"control   {name:60s} {err:10.3e}  {'detected' if err > TOLERANCE else 'NOT DETECTED'}",
                  flush=True)

    failed = [r for r in results if not r["passed"]]
    blind = [c for c in controls if not c["detected"]]
    lion_ref = next((r["reference"] for r in results if r["rule"] == "lion"), None)
    report = {
        "tolerance": TOLERANCE,
        "steps": args.steps,
        "criterion": "max over steps of max_i |p_symopt - p_torch|_i / |p_torch|_i, params W and b, float64",
        "problem": {
            "loss": "mean((tanh(x @ W + b) @ v - y)**2), v fixed",
            "params": {"W": [N_IN, N_HIDDEN], "b": [N_HIDDEN]},
            "batch": BATCH,
            "seed": SEED,
            "gradients": "symopt: pytensor.grad inside opt.updates; torch: autograd",
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pytensor": pytensor.__version__,
            "numpy": np.__version__,
            "symopt": symopt.__version__,
        },
        "torch_has_optim_Lion": hasattr(torch.optim, "Lion"),
        "lion_reference": lion_ref,
        "torch_foreach": False,
        "torch_default_dtype": "float64",
        "skipped_options": SKIPPED_OPTIONS,
        "rules_without_torch_counterpart": unmatched,
        "n_settings": len(results),
        "n_failed": len(failed),
        "results": results,
        "negative_controls": controls,
        "muon_vs_torch_bfloat16": muon_bfloat16,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"{'rule':9s} {'setting':34s} {'max rel err':>11s}  result (tolerance {TOLERANCE:g}, {args.steps} steps)")
    print("-" * 78)
    for r in results:
        print(f"{r['rule']:9s} {r['setting']:34s} {r['max_rel_error']:11.3e}  {'pass' if r['passed'] else 'FAIL'}")
    print("-" * 78)
    if lion_ref:
        print(f"lion reference: {lion_ref}")
    for rule, note in SKIPPED_OPTIONS.items():
        if wanted is None or rule in wanted:
            print(f"not checked: {rule} {note}")
    if unmatched:
        print(f"no torch counterpart, skipped: {', '.join(unmatched)}")
    if controls:
        print(f"negative controls (must differ by > {TOLERANCE:g}):")
        for c in controls:
            print(f"  {c['control']:66s} {c['max_rel_error']:9.2e}  {'detected' if c['detected'] else 'NOT DETECTED'}")
    print(f"{len(results) - len(failed)}/{len(results)} settings pass; report written to {args.out}")
    if blind:
        print(f"{len(blind)} negative control(s) were not detected: the comparison is not sensitive enough")
    return 1 if failed or blind else 0


if __name__ == "__main__":
    sys.exit(main())
