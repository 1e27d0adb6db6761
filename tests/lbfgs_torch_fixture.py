"""Record ``torch.optim.LBFGS`` trajectories (float64) into ``tests/lbfgs_torch.json``.

Run with torch installed (``pip install -e '.[bench]'``)::

    python tests/lbfgs_torch_fixture.py

``tests/test_lbfgs.py`` replays every case with :class:`symopt.LBFGS` and compares the
parameters, the returned loss and torch's counters ``n_iter``/``func_evals`` after every
``step(closure)``; the tests themselves do not need torch. Each case's problem is
written out here in torch and again, independently, in the test in PyTensor; the data
are stored in the JSON so no random generator has to agree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "lbfgs_torch.json"


def rosenbrock(torch, w):
    return 100 * (w[1] - w[0] ** 2) ** 2 + (1 - w[0]) ** 2


def logistic(torch, data):
    X, y = torch.tensor(data["X"], dtype=torch.float64), torch.tensor(data["y"], dtype=torch.float64)

    def loss(w, b):
        z = X @ w + b
        # mean of softplus(z) - y z, plus a small L2 term so the minimum is unique
        return (torch.nn.functional.softplus(z) - y * z).mean() + 0.5 * 0.01 * (w * w).sum()

    return loss


def logistic_data() -> dict[str, list]:
    rng = np.random.default_rng(16)
    X = rng.normal(size=(40, 3))
    y = (X @ np.array([1.5, -2.0, 0.5]) + 0.3 + rng.normal(size=40) > 0).astype(np.float64)
    return {"X": X.tolist(), "y": y.tolist()}


CASES = {
    # name: problem, initial params, LBFGS keywords (symopt names), steps
    "rosenbrock_wolfe": ("rosenbrock", {"w": [-1.2, 1.0]},
                         {"line_search": "strong_wolfe", "max_iter": 4, "history_size": 10}, 12),
    "rosenbrock_wolfe_defaults": ("rosenbrock", {"w": [-1.2, 1.0]}, {"line_search": "strong_wolfe"}, 3),
    "rosenbrock_fixed_step": ("rosenbrock", {"w": [-1.2, 1.0]},
                              {"line_search": None, "learning_rate": 1e-3, "max_iter": 3, "history_size": 4}, 12),
    "logistic_wolfe": ("logistic", {"w": [0.1, -0.2, 0.3], "b": 0.0},
                       {"line_search": "strong_wolfe", "max_iter": 2, "history_size": 3}, 12),
}


def run(torch, problem: str, init: dict, kwargs: dict, steps: int, data: dict) -> dict:
    params = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in init.items()}
    f = (lambda: rosenbrock(torch, params["w"])) if problem == "rosenbrock" else (
        lambda: logistic(torch, data)(params["w"], params["b"]))
    opt = torch.optim.LBFGS(
        list(params.values()), lr=kwargs.get("learning_rate", 1), max_iter=kwargs.get("max_iter", 20),
        history_size=kwargs.get("history_size", 100), line_search_fn=kwargs.get("line_search"),
    )

    def closure():
        opt.zero_grad()
        loss = f()
        loss.backward()
        return loss

    record = {"loss": [], "params": {k: [] for k in params}, "n_iter": [], "func_evals": []}
    for _ in range(steps):
        record["loss"].append(float(opt.step(closure).detach()))
        for k, p in params.items():
            record["params"][k].append(p.detach().numpy().tolist())
        state = opt.state[next(iter(params.values()))]
        record["n_iter"].append(int(state["n_iter"]))
        record["func_evals"].append(int(state["func_evals"]))
    return record


def main() -> int:
    import torch

    data = logistic_data()
    out = {"torch": torch.__version__, "logistic_data": data, "cases": {}}
    for name, (problem, init, kwargs, steps) in CASES.items():
        out["cases"][name] = {"problem": problem, "init": init, "kwargs": kwargs, "steps": steps,
                              "torch": run(torch, problem, init, kwargs, steps, data)}
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
