"""Train S independently initialised copies of one model in one compiled step.

Multi-seed comparisons train the same network from many seeds. Compiling one step
per seed and calling them in turn pays the per-call overhead S times and leaves the
matmuls small; :class:`SeedStack` instead stacks the S models' parameters along a
new leading *seed axis* and :class:`SeedTrainer` compiles one step that trains all
of them:

* every parameter ``p`` of shape ``shape`` becomes one shared variable of shape
  ``(S, *shape)`` whose slice ``s`` starts as seed ``s``'s model's value;
* a model of Dense, activation and Dropout layers runs as batched matmuls
  ``(S, B, n_in) @ (S, n_in, n_out)`` plus bias, one BLAS call per seed
  (:class:`symopt._batched.BatchedGemm`); any other model of :mod:`symopt.nn` layers
  (Conv2D, MaxPool2D, BatchNorm, Flatten, a user's layer) is one member's graph
  vectorised over the seed axis (``pytensor.graph.replace.vectorize_graph``), its
  buffers (BatchNorm running statistics, dropout keys and counters) stacked per member;
* seed ``s`` sees its own mini-batches (its own shuffle of the training set,
  ``numpy.random.default_rng(data_seed_s)``, exactly as :meth:`Trainer.fit` draws
  them) and its own dropout masks (those its own model draws: its key, the same step counter);
* the loss differentiated is the *sum* of the per-seed mean losses, so the gradient
  with respect to slice ``s`` is seed ``s``'s own gradient, and every update rule
  (all are element-wise) keeps all optimiser state per seed.

The result is the same as S separate :class:`~symopt.train.Trainer` runs, up to
float round-off of the batched matmuls (tested in ``tests/test_seeds.py``).

Every hyperparameter may be given per member, as a vector over the seed axis
(``symopt.Adam(stack.params, learning_rate=[1e-4, 3e-4, 1e-3])``, changed with
``set_hyperparameter`` without recompiling), so a learning-rate x seed grid is one stack.
Members may share a seed (``SeedStack(make_model, [0, 0, 1, 1], paired=True)``, built by
:func:`member_grid`): paired members start from one model and see the same batches and
dropout masks, so settings compared within a seed differ only in their values.
The built-in controls that reduce over a whole tensor or over all parameters
(``clip_norm``, ``clip_global_norm``, ``max_norm``, ``skip_nonfinite``) reduce over each
member's own slice; a member whose loss or gradient goes non-finite keeps its parameters
and state while the others step (``opt.member_skipped`` counts them). A user's transform
that reduces without declaring ``per_member`` would couple the seeds and is refused.

Each member also has its own fate: ``SeedTrainer.fit(plateau=MemberReduceLROnPlateau(...),
early_stopping=EarlyStopping(...))`` reduces the rate of each member whose own test loss
plateaued and freezes each member whose test loss stopped improving (an optimiser built
with ``stoppable=True``: the same per-member gate as ``skip_nonfinite``), see
:mod:`symopt.plateau`.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import vectorize_graph
from pytensor.tensor.variable import TensorVariable

from ._batched import batched_gemm
from .checkpoint import tally_means
from .nn import (Activation, Conv2D, Dense, Dropout, Layer, MaxPool2D, Sequential, accuracy, cross_entropy,
                 dropout_mask)
from .optimizer import Optimizer
from .train import EpochRecord, Trainer
from .transforms import BUILTIN_ORDER, SETTING_KEYWORDS, coupling_transforms, seed_coupling_transforms

__all__ = ["SeedStack", "SeedTrainer", "StackedStep", "StackGroup", "MemberGrid", "member_grid", "seed_axis_ndim",
           "seed_cross_entropy", "coupling_transforms", "seed_coupling_transforms", "COUPLING_SETTINGS", "STACKED_MODE"]

#: Keywords of the built-in transforms computed over whole tensors or all parameters
#: (``Transform.reduces``). With a seed axis they reduce per member (``per_member``); an
#: optimiser's transforms that would still mix the seeds, and that a SeedTrainer refuses,
#: are :func:`seed_coupling_transforms`.
COUPLING_SETTINGS = tuple(t.keyword for t in BUILTIN_ORDER if t.reduces is not None and t.keyword in SETTING_KEYWORDS)


#: The backend a SeedTrainer compiles with by default. Measured before the counter-based
#: dropout masks (S = 30, mnist-optimizers MLP with dropout, Adam; benchmarks/seeds_step.py):
#: CVM compiled the stacked step in 19 s against Numba's 178 s and stepped no slower. With
#: the counter masks (benchmarks/dropout_cost.py, quiet Zen 4) Numba's cold compile fell to
#: 54 s and its stacked dropout step costs 1.00x the step without dropout against CVM's
#: 1.76x (the C loop does not vectorise the hash); the default is to be re-measured.
#: Falls back to Numba, with a warning, where no C compiler is found.
STACKED_MODE = "CVM"


def seed_axis_ndim(param: Any) -> int:
    """Dimensions of ``param`` without the seed axis (masks use it to tell weights from biases)."""
    return param.ndim - (1 if getattr(param.tag, "seed_axis", False) else 0)


#: The layers the batched-matmul path stacks (see :class:`SeedStack`).
FAST_LAYERS = (Dense, Activation, Dropout)


class SeedStack:
    """S models of identical structure, stacked along a leading seed axis.

    Parameters
    ----------
    make_model
        ``make_model(seed) -> Layer``: builds seed ``seed``'s model, e.g.
        ``lambda s: symopt.nn.MLP([784, 100, 10], dropout=0.2, seed=s)``. The models
        are built once; their initial values, buffers and dropout keys are those of S
        separate runs.
    seeds
        The model seeds, one per copy (distinct, at least one).
    paired
        Allow a seed to appear more than once: members of equal seed are *paired*, built
        from one ``make_model(seed)`` (identical initial values) and drawing identical
        dropout masks, and :meth:`SeedTrainer.fit` gives them identical data orders (its
        default data seeds are ``seeds``). With per-member hyperparameters
        (``symopt.Adam(stack.params, learning_rate=[...])``) the members of one seed then
        differ only in those values, so a comparison of settings is paired by seed rather
        than confounded with data order (:func:`member_grid` builds such seeds and
        values). Without it, a repeated seed is refused as a likely mistake.
    vectorize
        How the stacked graph is built. ``None`` (default): batched matmuls for a
        :class:`~symopt.nn.Sequential` of :class:`~symopt.nn.Dense`, activation and
        :class:`~symopt.nn.Dropout` layers, :func:`pytensor.graph.replace.vectorize_graph`
        for any other model. ``True``: ``vectorize_graph`` for every model. ``False``:
        batched matmuls only (other layers are refused).

    Notes
    -----
    Two paths build the same numbers (to float round-off):

    * **Batched matmuls** (Dense/activation/Dropout stacks): each Dense is one
      :class:`~symopt._batched.BatchedGemm`, one BLAS gemm per seed with the bias rows as
      ``beta = 1`` and the gradient's transposed operands as BLAS flags. It is kept, rather
      than vectorising these models too, for speed: it is the path measured in
      ``benchmarks/README.md`` ("Stacked seeds": S = 30 stacked MLP steps per seed no slower
      than one ``Trainer`` step, faster than JAX ``jit(vmap)``), where a vectorised ``dot``
      lowers to PyTensor's generic batched ``dot``. Dropout keys are a vector over seeds,
      the step counter one scalar shared by them.
    * **Vectorised graph** (any model built from :mod:`symopt.nn` layers: Conv2D,
      MaxPool2D, BatchNorm, Flatten, a user's layer): the first model's graph is built for
      one member and :func:`pytensor.graph.replace.vectorize_graph` replaces each of its
      parameters and buffers by the stacked ``(S, ...)`` shared variable, adding the seed
      axis to every op. Every buffer is stacked (BatchNorm running statistics, dropout
      keys and step counters: each member its own), and the model's ``extra_updates``
      (BatchNorm's moving averages, the counter increments) are vectorised with it, so
      member ``s``'s statistics are those its own run computes.
    """

    def __init__(self, make_model: Callable[[int], Layer], seeds: Sequence[int], *, paired: bool = False,
                 vectorize: bool | None = None):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("SeedStack: seeds is empty; give at least one seed")
        if not isinstance(paired, bool):
            raise TypeError(f"SeedStack: paired must be True or False, got {paired!r}")
        if not paired and len(set(seeds)) != len(seeds):
            raise ValueError(f"SeedStack: seeds must be distinct, got {seeds}; pass paired=True for members that "
                             f"share a seed's initial values, data order and dropout masks")
        if vectorize not in (None, True, False):
            raise ValueError(f"SeedStack: vectorize must be None, True or False, got {vectorize!r}")
        #: The members' seeds, one per member (repeated seeds: paired members).
        self.seeds = seeds
        if paired:  # set only when True, so an unpaired stack's checkpoint signature is unchanged
            self.paired = True
        # One model per distinct seed: paired members start from the very same values and keys.
        built: dict[int, Layer] = {}
        for s in seeds:
            if s not in built:
                built[s] = make_model(s)
        #: ``models[i]``: the model built for ``seeds[i]`` (one object for paired members).
        self.models = [built[s] for s in seeds]
        first = self.models[0]
        if not isinstance(first, Layer):
            raise TypeError(f"SeedStack: make_model must return a symopt.nn Layer, got {type(first).__name__}")
        unbatched = _first_unbatched_layer(first)
        if vectorize is False and unbatched is not None:
            raise ValueError(
                f"SeedStack(vectorize=False) stacks Dense, activation and Dropout layers as batched matmuls; "
                f"{type(unbatched).__name__} {unbatched.name!r} needs vectorize=None or True"
            )
        signature = _structure(first)
        for seed, model in zip(seeds[1:], self.models[1:]):
            if _structure(model) != signature:
                raise ValueError(f"SeedStack: the model for seed {seed} differs in structure from seed {seeds[0]}'s")
        self.layers: list[Layer] = list(getattr(first, "layers", [first]))
        #: Stacked parameters, in the order of the single model's ``params``.
        self.params: list[SharedVariable] = []
        self._stacked: dict[int, SharedVariable] = {}
        for j, param in enumerate(first.params):
            stacked = self._stack([m.params[j] for m in self.models], f"{param.name}[seeds]")
            self.params.append(stacked)
            self._stacked[id(param)] = stacked
        #: Per dropout layer index: the S seeds' mask keys (an int64 vector) and the step
        #: counter, shared by the seeds (they step together; seed s's slice is what its own
        #: run draws: its key, the same counter and the same element indices).
        self._dropout: dict[int, tuple[SharedVariable, SharedVariable]] = {}
        self.extra_updates: OrderedDict[SharedVariable, Any] = OrderedDict()
        if vectorize or unbatched is not None:
            # Set only on this path, so a batched-matmul stack's checkpoint signature is unchanged.
            self._buffers = [self._stack([m.buffers[j] for m in self.models], f"{b.name}[seeds]")
                             for j, b in enumerate(first.buffers)]
            return
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                counters = {int(m.layers[i].counter.get_value()) for m in self.models}
                if len(counters) != 1:
                    raise ValueError(f"SeedStack: the models' {layer.name!r} step counters differ: {sorted(counters)}")
                keys = np.array([m.layers[i].key.get_value() for m in self.models], dtype=np.int64)
                self._dropout[i] = (
                    pytensor.shared(keys, name=f"{layer.name}.key[seeds]"),
                    pytensor.shared(np.int64(counters.pop()), name=f"{layer.name}.counter[seeds]"),
                )

    #: Whether seeds may repeat (see ``paired`` above).
    paired: bool = False

    #: The stacked buffers of a vectorised stack (``None``: batched matmuls).
    _buffers: list[SharedVariable] | None = None

    @staticmethod
    def _stack(variables: Sequence[SharedVariable], name: str) -> SharedVariable:
        stacked = pytensor.shared(np.stack([v.get_value() for v in variables]), name=name)
        stacked.tag.seed_axis = True
        return stacked

    @property
    def n_seeds(self) -> int:
        """The number of members (a paired stack counts a repeated seed once per member)."""
        return len(self.seeds)

    @property
    def members_of(self) -> dict[int, list[int]]:
        """Seed -> the indices of its members, in the order of :attr:`seeds` (more than one
        per seed only in a ``paired`` stack)."""
        out: dict[int, list[int]] = {}
        for index, seed in enumerate(self.seeds):
            out.setdefault(seed, []).append(index)
        return out

    @property
    def vectorized(self) -> bool:
        """Whether the stack is the first model's graph vectorised over the seed axis
        (``False``: batched matmuls; see the class notes)."""
        return self._buffers is not None

    @property
    def buffers(self) -> list[SharedVariable]:
        """Vectorised: every buffer of the single model, stacked, in its order. Batched
        matmuls: the dropout keys (one vector per layer) and step counters."""
        if self._buffers is not None:
            return list(self._buffers)
        return [var for pair in self._dropout.values() for var in pair]

    @property
    def input_ndim(self) -> int | None:
        """Dimensions of one member's input (2 before a Dense, 4 before a Conv2D or
        MaxPool2D), from the first layer that fixes it; ``None`` where none does. A
        batched-matmul stack takes ``(batch, features)``."""
        if self._buffers is None:
            return 2
        for layer in _leaf_layers(self.models[0]):
            if isinstance(layer, Dense):
                return 2
            if isinstance(layer, (Conv2D, MaxPool2D)):
                return 4
        return None

    def output(self, x: Any, train: bool, *, per_member: bool | None = None) -> TensorVariable:
        """Logits ``(S, B, classes)`` for inputs ``(S, B, ...)`` (one batch per seed) or
        ``(B, ...)`` (the same batch for every seed). In train mode ``extra_updates``
        afterwards holds the buffer updates of this call (dropout step counters,
        BatchNorm running statistics).

        ``per_member`` says which of the two ``x`` is; ``None``: one more dimension than
        :attr:`input_ndim` means per member.
        """
        x = pt.as_tensor_variable(x)
        ndim = self.input_ndim
        if per_member is None:
            if ndim is None:
                raise ValueError("SeedStack.output: the model's input dimensions are unknown; pass per_member")
            if x.ndim not in (ndim, ndim + 1):
                raise ValueError(f"SeedStack expects (S, batch, ...) or (batch, ...) inputs of {ndim + 1} or {ndim} "
                                 f"dimensions, got {x.ndim}-d")
            per_member = x.ndim == ndim + 1
        if self._buffers is not None:
            return self._vectorized_output(x, bool(train), bool(per_member))
        if x.ndim != (3 if per_member else 2):
            raise ValueError(f"SeedStack expects (S, batch, features) or (batch, features) inputs, got {x.ndim}-d")
        updates: OrderedDict[SharedVariable, Any] = OrderedDict()
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                W = self._stacked[id(layer.W)]
                b = None if layer.b is None else self._stacked[id(layer.b)]
                if x.ndim == 2:
                    # A batch shared by all seeds (evaluation) is one (B, n_in) @ (n_in, S * n_out) product.
                    out = pt.tensordot(x, W, axes=[[1], [1]]).dimshuffle(1, 0, 2)
                    x = out if b is None else out + b[:, None, :]
                else:
                    # One BLAS gemm per seed, bias rows first (beta = 1); the gradient's
                    # transposed operands are BLAS flags, not copies (symopt._batched).
                    x = batched_gemm(x, W, b)
            elif isinstance(layer, Dropout):
                if not train or layer.p == 0.0:
                    continue
                if x.ndim == 2:
                    x = pt.broadcast_to(x[None], (self.n_seeds, *x.shape))
                # Seed s's slice: seed s's key (broadcast along the seed axis), the shared
                # counter and the element indices of its own run's (B, n) tensor.
                keys, counter = self._dropout[i]
                updates[counter] = counter + np.int64(1)
                x = dropout_mask(x, keys[:, None, None], counter, layer.p, x.dtype, lead=1)
            else:
                x = layer.output(x, train)
        if train:
            self.extra_updates = updates
        return x

    def _vectorized_output(self, x: TensorVariable, train: bool, per_member: bool) -> TensorVariable:
        assert self._buffers is not None
        template = self.models[0]
        replace: dict[Any, Any] = {}
        if per_member:
            if x.ndim < 1:
                raise ValueError("SeedStack.output: a per-member input needs a leading seed axis")
            core = pt.tensor(name="member_input", dtype=x.dtype, shape=x.type.shape[1:])
            replace[core] = x
        else:
            core = x
        # One member's graph, its shared variables standing for the stacked ones.
        for var, stacked in zip(template.params + template.buffers, self.params + self._buffers):
            replace[var] = stacked
        out = template.output(core, train)
        pending = list(getattr(template, "extra_updates", {}).items()) if train else []
        for var, _ in pending:
            if var not in replace:
                raise ValueError(f"SeedStack: the model updates {var.name or var}, which is not among its "
                                 f"params or buffers; it cannot be stacked")
        new = vectorize_graph([out, *(value for _, value in pending)], replace)
        # An output or update that depends on nothing stacked has no seed axis yet.
        new_out = self._with_seed_axis(new[0], out.ndim)
        if train:
            self.extra_updates = OrderedDict(
                (replace[var], pt.cast(self._with_seed_axis(value, var.ndim), replace[var].dtype))
                for (var, _), value in zip(pending, new[1:])
            )
        return new_out

    def _with_seed_axis(self, value: TensorVariable, core_ndim: int) -> TensorVariable:
        if value.ndim == core_ndim + 1:
            return value
        return pt.broadcast_to(value[None], (self.n_seeds, *(value.shape[k] for k in range(value.ndim))))

    def values(self, index: int) -> list[np.ndarray]:
        """Seed ``seeds[index]``'s current parameter values, in the single model's order."""
        return [p.get_value()[index].copy() for p in self.params]

    def buffer_values(self, index: int) -> list[np.ndarray]:
        """Seed ``seeds[index]``'s current buffer values (BatchNorm running statistics,
        dropout key and step counter), in the order of the single model's ``buffers``."""
        if self._buffers is not None:
            return [b.get_value()[index].copy() for b in self._buffers]
        out = []
        for layer in self.layers:
            if isinstance(layer, Dropout):
                keys, counter = self._dropout[self.layers.index(layer)]
                out += [np.int64(keys.get_value()[index]), np.int64(counter.get_value())]
        return out

    def reset(self, make_model: Callable[[int], Layer], seeds: Sequence[int]) -> None:
        """Make the members the fresh models ``make_model(seed)`` of ``seeds``, keeping the graph.

        Each member's parameters and buffers (dropout keys and counters, BatchNorm running
        statistics) become those of its freshly built model, as if the stack had been built
        from ``seeds``; a :class:`SeedTrainer` compiled over the stack then trains the new
        members without recompiling (``symopt sweep`` reuses one stacked step for every
        group of runs of one structure). Unlike the constructor, a seed may repeat: members
        that differ only in their optimiser's per-member hyperparameters start alike.

        Raises
        ------
        ValueError
            ``seeds`` does not hold one seed per member, a model differs in structure from
            the stack's, or (batched matmuls) the models' dropout counters differ. Nothing
            is changed then.
        """
        seeds = [int(s) for s in seeds]
        if len(seeds) != self.n_seeds:
            raise ValueError(f"SeedStack.reset: got {len(seeds)} seeds for a stack of {self.n_seeds} members")
        models = [make_model(s) for s in seeds]
        signature = _structure(self.models[0])
        for seed, model in zip(seeds, models):
            if not isinstance(model, Layer) or _structure(model) != signature:
                raise ValueError(f"SeedStack.reset: the model for seed {seed} differs in structure from the stack's")
        values: list[tuple[SharedVariable, Any]] = [
            (var, np.stack([m.params[j].get_value() for m in models])) for j, var in enumerate(self.params)]
        if self._buffers is not None:
            values += [(var, np.stack([m.buffers[j].get_value() for m in models]))
                       for j, var in enumerate(self._buffers)]
        else:
            for i, (keys, counter) in self._dropout.items():
                counters = {int(m.layers[i].counter.get_value()) for m in models}
                if len(counters) != 1:
                    raise ValueError(f"SeedStack.reset: the models' {self.layers[i].name!r} step counters differ: "
                                     f"{sorted(counters)}")
                values += [(keys, np.array([m.layers[i].key.get_value() for m in models], dtype=np.int64)),
                           (counter, np.int64(counters.pop()))]
        for var, value in values:  # everything checked: now change the stack
            var.set_value(value)
        self.seeds = seeds


class MemberGrid(NamedTuple):
    """The members of a paired grid (:func:`member_grid`): unpack as ``seeds, values``."""

    #: One seed per member, each seed repeated once per setting (``SeedStack(..., paired=True)``).
    seeds: list[int]
    #: Hyperparameter name -> one value per member (``symopt.Adam(stack.params, **values)``).
    values: dict[str, list[float]]


def member_grid(seeds: Sequence[int], **values: Sequence[float]) -> MemberGrid:
    """Seeds x settings as stack members, paired by seed.

    Every combination of the given hyperparameter values (their product, in keyword
    order, the last varying fastest) is one setting; each seed trains every setting.
    Members are seed-major: member ``i`` has seed ``seeds[i // n_settings]`` and setting
    ``i % n_settings``.

    Examples
    --------
    >>> seeds, values = member_grid([0, 1], learning_rate=[1e-3, 3e-3])
    >>> seeds, values["learning_rate"]
    ([0, 0, 1, 1], [0.001, 0.003, 0.001, 0.003])

    Then ``stack = SeedStack(make_model, seeds, paired=True)`` and
    ``symopt.Adam(stack.params, **values)``: the two learning rates of seed 0 start from
    one initial model and see the same batches and dropout masks.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("member_grid: seeds is empty; give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"member_grid: seeds must be distinct, got {seeds} (each is repeated once per setting)")
    if not values:
        raise ValueError("member_grid: give at least one hyperparameter's values, e.g. learning_rate=[1e-3, 3e-3]")
    columns: dict[str, list[float]] = {}
    for name, given in values.items():
        if isinstance(given, (str, bytes)) or not isinstance(given, (Sequence, np.ndarray)) or len(given) == 0:
            raise TypeError(f"member_grid: {name} must be a non-empty list of numbers, got {given!r}")
        columns[name] = [float(v) for v in given]
    settings = list(itertools.product(*columns.values()))
    return MemberGrid(
        seeds=[s for s in seeds for _ in settings],
        values={name: [setting[k] for _ in seeds for setting in settings] for k, name in enumerate(columns)},
    )


def _leaf_layers(model: Layer) -> list[Layer]:
    if isinstance(model, Sequential):
        return [leaf for layer in model.layers for leaf in _leaf_layers(layer)]
    return [model]


def _first_unbatched_layer(model: Layer) -> Layer | None:
    """The first layer the batched-matmul path has no version of (``None``: it stacks the model)."""
    if not isinstance(model, Sequential):
        return model
    for layer in model.layers:
        if not isinstance(layer, FAST_LAYERS):
            return layer
    return None


def _structure(model: Layer) -> list[tuple[str, tuple[int, ...], str]]:
    layers = [(type(layer).__name__, (), getattr(layer, "name", "")) for layer in _leaf_layers(model)]
    params = [("param", tuple(p.get_value(borrow=True).shape), str(p.dtype)) for p in model.params]
    buffers = [("buffer", tuple(np.shape(b.get_value(borrow=True))), str(b.dtype)) for b in model.buffers]
    return layers + params + buffers


def seed_cross_entropy(logits: TensorVariable, labels: TensorVariable) -> TensorVariable:
    """Per-seed mean softmax cross-entropy: logits ``(S, B, C)``, labels ``(S, B)`` -> ``(S,)``."""
    s, b, c = logits.shape
    losses = cross_entropy(logits.reshape((s * b, c)), labels.reshape((s * b,)), reduction="none")
    return losses.reshape((s, b)).mean(axis=1)


class StackGroup:
    """Disjoint :class:`SeedStack` objects trained side by side, their members one list.

    Member ``i`` of the group is member ``i`` of the first stack, then the second stack's
    members follow, and so on. Each stack keeps its own parameters, so each may have its
    own rule: ``symopt.combine(adam=symopt.Adam(a.params), sgd=symopt.SGD(b.params))``
    over ``StackGroup([a, b])`` trains two rules in one compiled step. Stacks built from
    the same seeds are paired across the group: seed ``s``'s members start from the same
    weights, draw the same dropout masks and (with :meth:`SeedTrainer.fit`'s default data
    seeds, :attr:`seeds`) see the same batches.
    """

    def __init__(self, stacks: Sequence[SeedStack]):
        if isinstance(stacks, SeedStack) or not isinstance(stacks, Sequence) or not stacks:
            raise TypeError(f"StackGroup: stacks must be a non-empty list of SeedStack, got {stacks!r}")
        owner: dict[int, int] = {}
        for index, stack in enumerate(stacks):
            if not isinstance(stack, SeedStack):
                raise TypeError(f"StackGroup: stacks[{index}] is a {type(stack).__name__}, not a SeedStack")
            for var in [*stack.params, *stack.buffers]:
                if id(var) in owner:
                    raise ValueError(f"StackGroup: stacks[{owner[id(var)]}] and stacks[{index}] share {var.name}; "
                                     f"give each stack once")
                owner[id(var)] = index
        dtypes = {str(stack.params[0].dtype) for stack in stacks if stack.params}
        if len(dtypes) > 1:
            raise ValueError(f"StackGroup: the stacks' parameters differ in dtype {sorted(dtypes)}; the data is "
                             f"stored once, in one dtype")
        self.stacks: list[SeedStack] = list(stacks)
        #: Every member's seed, stack after stack.
        self.seeds: list[int] = [seed for stack in self.stacks for seed in stack.seeds]
        #: Every stack's parameters, stack after stack (what the optimiser is built over).
        self.params: list[SharedVariable] = [p for stack in self.stacks for p in stack.params]

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def buffers(self) -> list[SharedVariable]:
        return [b for stack in self.stacks for b in stack.buffers]

    @property
    def members_of(self) -> dict[int, list[int]]:
        """Seed -> the group indices of its members."""
        out: dict[int, list[int]] = {}
        for index, seed in enumerate(self.seeds):
            out.setdefault(seed, []).append(index)
        return out

    def locate(self, index: int) -> tuple[SeedStack, int]:
        """The stack holding group member ``index`` and the member's index in it."""
        if not 0 <= index < self.n_seeds:
            raise IndexError(f"StackGroup: member {index} out of range for {self.n_seeds} members")
        for stack in self.stacks:
            if index < stack.n_seeds:
                return stack, index
            index -= stack.n_seeds
        raise AssertionError("unreachable")

    def values(self, index: int) -> list[np.ndarray]:
        """Member ``index``'s current parameter values (see :meth:`SeedStack.values`)."""
        stack, member = self.locate(index)
        return stack.values(member)

    def buffer_values(self, index: int) -> list[np.ndarray]:
        stack, member = self.locate(index)
        return stack.buffer_values(member)


class StackedStep:
    """The step of a :class:`SeedStack` or a :class:`StackGroup` (a
    :class:`~symopt.train.StepBuilder`): S streams, member ``s``'s rows of batch ``i`` are
    ``order[s, i * batch_size:(i + 1) * batch_size]``.

    The loss differentiated is the sum of the per-seed mean losses, so each seed gets its
    own gradient; a step returns the S losses, an eval batch the S loss sums and counts
    of correct answers.
    """

    def __init__(self, stack: SeedStack | StackGroup):
        self.model = self.stack = stack
        self.streams = stack.n_seeds
        self.parts: list[SeedStack] = stack.stacks if isinstance(stack, StackGroup) else [stack]

    def check(self, optimizer: Any) -> None:
        # As a set: a symopt.combine of rules over parts of the model lists them member by member.
        ids = [id(p) for p in optimizer.params]
        if len(ids) != len(self.stack.params) or set(ids) != {id(p) for p in self.stack.params}:
            raise ValueError("SeedTrainer: the optimizer must be built over stack.params (a StackGroup: every "
                             "stack's params, e.g. symopt.combine of one optimiser per stack)")

    def initial_order(self, n_train: int) -> np.ndarray:
        return np.tile(np.arange(n_train, dtype=np.int64), (self.streams, 1))

    def train(self, data: tuple[Any, Any], order: Any, batch: Any, batch_size: int) -> tuple[Any, Any, Any, Any]:
        rows = order[:, batch * batch_size : (batch + 1) * batch_size]  # (S, B)
        losses, extra, start = [], OrderedDict(), 0
        for part in self.parts:
            own = rows if len(self.parts) == 1 else rows[start : start + part.n_seeds]
            losses.append(seed_cross_entropy(part.output(data[0][own], train=True, per_member=True), data[1][own]))
            extra.update(part.extra_updates)
            start += part.n_seeds
        per_seed = losses[0] if len(losses) == 1 else pt.concatenate(losses)
        # d(sum_s L_s)/d(slice s) = dL_s/d(slice s): each seed gets its own gradient.
        objective = per_seed.sum()
        objective.tag.member_losses = per_seed  # skip_nonfinite checks each member's own loss
        return objective, per_seed, extra, {}

    def evaluate(self, data: tuple[Any, Any], start: Any, stop: Any) -> tuple[list[Any], Any]:
        x, y = data[0][start:stop], data[1][start:stop]
        sums: list[list[Any]] = [[], []]
        for part in self.parts:
            logits = part.output(x, train=False, per_member=False)  # (S, b, C)
            S, n = part.n_seeds, logits.shape[1]
            flat, labels = logits.reshape((S * n, logits.shape[2])), pt.tile(y, S)
            sums[0].append(cross_entropy(flat, labels, reduction="none").reshape((S, n)).sum(axis=1))
            sums[1].append(accuracy(flat, labels, reduction="none").reshape((S, n)).sum(axis=1))
        if len(self.parts) == 1:
            return [sums[0][0], sums[1][0]], {}
        return [pt.concatenate(sums[0]), pt.concatenate(sums[1])], {}


class SeedTrainer(Trainer):
    """One compiled train step and one eval step for all seeds of a :class:`SeedStack`.

    A :class:`~symopt.train.Trainer` whose step is a :class:`StackedStep`: data in shared
    variables, each step receives only its batch number; seed ``s``'s rows of batch ``i``
    are ``order[s, i * batch_size:(i + 1) * batch_size]``.

    Parameters
    ----------
    stack
        The models: a :class:`SeedStack`, or several (a list, or a :class:`StackGroup`)
        whose members are then numbered stack after stack.
    optimizer
        An :class:`~symopt.optimizer.Optimizer` over ``stack.params``; its state is per
        seed, its hyperparameters shared by the seeds or, given as vectors, per seed.
        Over several stacks, e.g. ``symopt.combine`` of one optimiser per stack: members
        that differ in their rule, trained in one compiled step.
    x_train, y_train, x_test, y_test
        As for :class:`~symopt.train.Trainer` (one copy, shared by the seeds).
    batch_size, eval_batch_size
        As for :class:`~symopt.train.Trainer`.
    mode
        Compilation mode; ``None``: ``$SYMOPT_MODE`` if set, else :data:`STACKED_MODE`.
    on_nonfinite
        As for :class:`~symopt.train.Trainer`, but ``"continue"`` by default: a seed that
        diverges is a result of a comparison, recorded with its non-finite losses.
    """

    def __init__(
        self,
        stack: SeedStack | StackGroup | Sequence[SeedStack],
        optimizer: Optimizer,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        mode: Any = None,
        on_nonfinite: str = "continue",
    ):
        if not isinstance(stack, (SeedStack, StackGroup)):
            stack = StackGroup(stack)
        step = StackedStep(stack)
        step.check(optimizer)
        coupled = seed_coupling_transforms(optimizer)
        if coupled:
            raise ValueError(
                f"SeedTrainer: {', '.join(coupled)} would couple the seeds (computed over whole tensors); "
                f"train seeds separately with symopt.Trainer to use it"
            )
        if mode is None and not os.environ.get("SYMOPT_MODE"):
            mode = STACKED_MODE
        self.stack = stack
        super().__init__(stack, optimizer, x_train, y_train, x_test, y_test, batch_size, eval_batch_size, mode=mode,
                         on_nonfinite=on_nonfinite, step=step)

    def evaluate(self) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        """Per-seed mean test loss and accuracy, arrays of shape ``(S,)``."""
        return self._evaluate()

    def run_epoch(  # type: ignore[override]
        self, rngs: Sequence[np.random.Generator], progress: bool = False, desc: str = "", *, epoch: int | None = None
    ) -> np.ndarray:
        """One pass; seed ``s`` follows ``rngs[s].permutation``. Returns per-seed mean train losses."""
        return tally_means(self._tally(rngs, progress, desc, epoch=epoch))

    def epoch_tally(  # type: ignore[override]
        self, rngs: Sequence[np.random.Generator], progress: bool = False, desc: str = "", **kwargs: Any
    ) -> np.ndarray:
        """One pass, as :meth:`~symopt.train.Trainer.epoch_tally` with one tally row per seed
        (with ``skip_nonfinite`` each row counts the calls in which any seed was skipped;
        ``optimizer.member_skipped`` has each seed's own count)."""
        return self._tally(rngs, progress, desc, **kwargs)

    def fit(  # type: ignore[override]
        self,
        epochs: int,
        data_seeds: Sequence[int] | None = None,
        progress: bool = True,
        callback: Callable[[int, list[EpochRecord]], None] | None = None,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        resume: bool | str | os.PathLike[str] = False,
        config: Mapping[str, Any] | None = None,
        plateau: Any = None,
        early_stopping: Any = None,
    ) -> list[list[EpochRecord]]:
        """Train ``epochs`` epochs; returns one history per seed (as :meth:`Trainer.fit` would).

        ``data_seeds`` gives each member's data-order seed (default: the members' model
        seeds, so the members of a ``paired`` stack that share a seed share the order).
        ``seconds`` of an epoch is the wall time of the joint epoch divided by S.
        ``checkpoint``, ``checkpoint_every``, ``resume``, ``config`` and Ctrl-C: as for
        :meth:`Trainer.fit` (one checkpoint holds every seed's state).

        ``plateau``: a :class:`~symopt.plateau.MemberReduceLROnPlateau`, stepped with each
        seed's own test loss every epoch (after the callback). ``early_stopping``: a
        :class:`~symopt.plateau.EarlyStopping`, stepped after it; a seed that stops is frozen
        (the optimiser must be built with ``stoppable=True``) while the others train on, its
        epoch recorded in ``early_stopping.stopped_epoch``; its later history rows are those
        of the frozen model (its test loss no longer changes). The run ends once every seed
        has stopped. Both states go in the checkpoint.
        """
        data_seeds = list(self.stack.seeds if data_seeds is None else data_seeds)
        on_epoch = None if callback is None else (lambda records: callback(records[0].epoch, records))
        return self._fit(epochs, data_seeds, progress, on_epoch, per_stream=True, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, resume=resume, config=config, plateau=plateau,
                         early_stopping=early_stopping)
