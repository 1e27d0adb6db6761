"""Assemble experiments/README.md from the per-experiment sections (python experiments/build_readme.py)."""

from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["trajectories", "gradcheck", "mnist-optimizers", "mnist-optimizers-modern", "lr-sensitivity", "mnist-iterations", "weight-init", "batchnorm",
         "overfitting", "hyperparameter-search"]

HEADER = """# Experiments

Each experiment of the seed documents, reproduced through compiled PyTensor functions on real MNIST. Every
experiment saves raw per-seed results under `results/` (JSON, or SQLite for the Optuna study) and draws its
figures from those files alone in a separate step:

```sh
.venv/bin/symopt experiment NAME            # run the seed's protocol, write results/ and figures/, print the result
.venv/bin/symopt experiment NAME --plot-only  # redraw the figures from results/
.venv/bin/symopt experiment NAME --quick      # a seconds-long version (the test suite runs these)
.venv/bin/symopt bench-mnist --optimizers sgd,adam --seeds 30 --epochs 20   # resumable optimiser benchmark
```

Measured on 2-core machines (an AMD EPYC, or an Intel Xeon where a section says so) with OpenBLAS on one
thread; wall times were taken while other jobs shared the two cores, so treat them as upper bounds. Each
section states whether the seed's claim holds.

"""


def main() -> None:
    parts = [HEADER]
    for name in ORDER:
        section = HERE / "sections" / f"{name}.md"
        text = section.read_text().strip() if section.exists() else f"### `{name}`\n\nNot run yet."
        parts.append(text.replace("### ", "## ", 1) + "\n")  # sections are written one level down
    (HERE / "README.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
