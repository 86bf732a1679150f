"""Typed configuration of a grid cell: dataclass schemas registered in Hydra's ConfigStore, and validation.

The config groups in ``conf/`` (``data``, ``model``, ``train``) fill these schemas (``metrics`` is no group: its
defaults are the metric families' ``Config`` dataclasses); a typo in a key is refused by Hydra itself (struct
mode). ``validate`` checks the values and returns every problem as a message naming the key, the value and
what is allowed; ``check`` raises ``ConfigError`` with all of them. The value rules (``landscape.rules``) of
the root config's keys are declared once (``VALUE_RULES``; keys without an entry get their type's: integers in
0 .. 2**63-1, finite numbers); a metric family's settings carry theirs in its ``Config`` fields' metadata,
checked by the metrics contract (``landscape.metrics.validate_metrics``); ``bounds`` lists them all.
``launch_problems`` adds what depends on the machine (model size against memory, threads against CPUs).
Validation needs no data: dataset sizes are known from the config (CIFAR-10: counted on disk once).

Importing this module is cheap (no torch, no metric family): the ``metrics`` schema, built from the
registered families' ``Config`` classes, and the root ``LandscapeConfig`` are made on first use
(``landscape.config.LandscapeConfig``, ``register_configs``); ``validate`` imports what it checks against.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from landscape.rules import FLOAT32_MAX, FRACTION, INT64_MAX, Rule, field_rule, ints, nums  # noqa: F401 - re-exported: the caps of every number


@dataclass
class DataConfig:
    """``data.*``. ``subsample``: fraction in (0, 1] or a count >= 1 of the training split; ``label_noise``:
    fraction in [0, 1) of training labels replaced by another class. Dataset-specific keys: digits
    (``split_seed``), mnist1d (``num_samples``, ``generator_seed``), gaussian (``n_train``, ``n_test``,
    ``dim``, ``n_classes``, ``separation``, ``generator_seed``), cifar10 (``root``: directory of the python
    batches)."""

    name: str = "digits"
    subsample: Any = 1.0
    label_noise: float = 0.0
    subsample_seed: int = 0
    noise_seed: int = 0
    split_seed: int = 0
    num_samples: int = 5000
    generator_seed: int = 0
    n_train: int = 1000
    n_test: int = 1000
    dim: int = 16
    n_classes: int = 4
    separation: float = 3.0
    root: Optional[str] = None


@dataclass
class ModelConfig:
    """``model.*``: ``mlp`` (width, depth, activation), ``cnn`` (width k, depth, activation, batch_norm),
    ``resnet18`` (width k: stages of k, 2k, 4k, 8k channels)."""

    name: str = "mlp"
    width: int = 32
    depth: int = 2
    activation: str = "relu"
    batch_norm: bool = False


@dataclass
class TrainConfig:
    """``train.*``. ``batch_size``: an int or ``full`` (full-batch gradient descent); ``steps`` overrides
    ``epochs`` when set; ``schedule``: constant | step (x``lr_decay`` at each epoch of ``lr_milestones``) |
    cosine; ``seeds``: the models of the cell; ``checkpoint_every``: epochs between checkpoints;
    ``vectorize``: train the seeds together (torch.func + vmap) where supported: auto | on | off."""

    loss: str = "cross_entropy"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: Any = 64
    epochs: int = 20
    steps: Optional[int] = None
    schedule: str = "constant"
    lr_decay: float = 0.1
    lr_milestones: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    checkpoint_every: int = 5
    vectorize: str = "auto"


@dataclass
class PhaseConfig:
    """``phase.*``: how ``landscape-phase`` reads this sweep (analysis only: not part of ``cell_id`` or of what
    a cell computes). ``x``/``y``/``facet``: knob columns of the figure; ``thresholds``: paper | calibrate (the
    base values, landscape/phase.py); ``train_loss`` (nats) or ``train_error`` (% of the training set),
    ``mc_underfit``/``mc_barrier`` (percentage points of training error), ``cka`` (unitless): explicit values
    on top; ``limits``: data | paper (colour limits); ``uncertain_below``: label confidence under which a cell
    is drawn hatched; ``bootstrap``: resamples per cell; ``select``: ``FAMILY.SETTING=VALUE`` items choosing a
    metric family's setting where the rows hold several (``landscape-phase --select``; landscape.settings_choice)."""

    x: Optional[str] = None
    y: Optional[str] = None
    facet: Optional[str] = None
    thresholds: str = "paper"
    train_loss: Optional[float] = None
    train_error: Optional[float] = None
    mc_underfit: Optional[float] = None
    mc_barrier: Optional[float] = None
    cka: Optional[float] = None
    limits: str = "data"
    uncertain_below: float = 0.9
    bootstrap: int = 1000
    select: list[str] = field(default_factory=list)


_ROOT: dict[str, Any] = {}  # the built classes, and their bounds (``bounds``)


def _build_root() -> dict[str, type]:
    """``MetricsConfig`` (``pairs`` + one node per registered family, its ``Config``) and ``LandscapeConfig``."""
    if not _ROOT:
        from dataclasses import make_dataclass

        from landscape.metrics import family_config_classes, on_change

        on_change(_ROOT.clear)  # a family registered later: the classes are built again on next use

        specs: list[tuple[str, Any, Any]] = [
            ("pairs", str, field(default="all")),  # which pairs of seeds the pair families measure: all | chain | star
        ]
        for name, cls in family_config_classes().items():
            specs.append((name, cls, field(default_factory=cls)))
        metrics_cls = make_dataclass("MetricsConfig", specs)
        root = make_dataclass(
            "LandscapeConfig",
            [
                ("data", DataConfig, field(default_factory=DataConfig)),
                ("model", ModelConfig, field(default_factory=ModelConfig)),
                ("train", TrainConfig, field(default_factory=TrainConfig)),
                ("metrics", metrics_cls, field(default_factory=metrics_cls)),
                ("sweep_name", str, field(default="default")),
                ("device", str, field(default="auto")),
                ("threads", int, field(default=1)),
                ("dry_run", bool, field(default=False)),
                ("phase", PhaseConfig, field(default_factory=PhaseConfig)),  # landscape-phase settings (analysis only)
            ],
        )
        root.__doc__ = _ROOT_DOC
        for cls in (metrics_cls, root):  # importable by name (module __getattr__ below): pickled by reference, so
            cls.__module__ = __name__  # worker processes see the same classes (and dataclasses.MISSING itself)
        _ROOT.update(MetricsConfig=metrics_cls, LandscapeConfig=root)
    return _ROOT


_ROOT_DOC = """The root config of one cell. ``sweep_name`` names the sweep (and its default output directory);
    ``device``: auto | cpu | cuda | cuda:N; ``threads``: CPU threads of torch in the job (1 by default: grids
    parallelise over cells, and a fixed count keeps CPU numbers reproducible); ``dry_run``: list and validate
    the grid's cells, train nothing; ``metrics``: ``pairs`` and one node per metric family."""


def __getattr__(name: str) -> Any:
    """``LandscapeConfig`` and ``MetricsConfig``, built on first use (they need every family's ``Config``)."""
    if name in ("LandscapeConfig", "MetricsConfig"):
        return _build_root()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_configs() -> None:
    """Register the root schema as ``base_config`` in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=_build_root()["LandscapeConfig"])


# ------------------------------------------------------------------------------------------- validation
class ConfigError(ValueError):
    """Invalid configuration; the message lists every bad key with its value and what is allowed."""

    def __init__(self, problems: list[str], where: str = ""):
        self.problems = problems
        head = f"invalid configuration{' ' + where if where else ''}:"
        super().__init__("\n  ".join([head, *problems]))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _choice(problems: list[str], key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{key}={value!r}: expected one of {', '.join(allowed)}")


def validate(cfg: DictConfig | Any) -> list[str]:
    """Every problem of a composed cell config, as ``"key=value: what is allowed"`` messages (empty: valid):
    the keys the schema does not know, the bounds of every leaf key (``bounds``), then per concern the choices
    and the rules that tie keys together: the dataset (``_check_data``: its own checker in ``DATASET_CHECKS``),
    the model, training (against the training-set size), the run (``sweep_name``, ``device``), the
    ``landscape-phase`` settings, and the metric families' settings (``landscape.metrics.validate_metrics``)."""
    p: list[str] = [
        unknown_key_message(k, added=True) or f"{k}: not a key of the config schema" for k, _ in unknown_keys(cfg)
    ]
    bad = set()  # keys refused by their rules: the rules below that read them are skipped
    for key, msg in bound_problems(cfg):
        p.append(msg)
        bad.add(key)
    n_train = _check_data(p, cfg.data, bad)
    _check_model(p, cfg.model)
    _check_train(p, cfg.train, cfg.data, n_train, bad)
    _check_run(p, cfg)
    if "phase" in cfg:
        _check_phase(p, cfg.phase)

    from landscape.metrics import validate_metrics

    p.extend(validate_metrics(cfg))  # the metric families' settings: their rules and cross-field checks
    return p


def _cifar10_size(p: list[str], d: Any, bad: set[str]) -> int | None:
    """CIFAR-10: ``data.root`` must hold its python batches (files present and safe to read); their training
    size, counted on disk, or None after a problem."""
    from landscape import data as data_mod

    if not d.root:
        p.append(
            "data.root=None: CIFAR-10 needs the directory of its python batches (data.root=/path/to/cifar-10-batches-py)"
        )
        return None
    missing = data_mod.cifar10_missing_files(d.root)
    if missing:
        p.append(f"data.root={d.root!r}: missing CIFAR-10 batch files {', '.join(missing)}")
        return None
    try:
        return data_mod.full_train_size(d)
    except data_mod.UnsafeFileError as exc:
        p.append(f"data.root={d.root!r}: {exc}")
        return None


def _generated_size(p: list[str], d: Any, bad: set[str]) -> int | None:
    """A dataset whose size follows from its config (digits' split, MNIST-1D's and the Gaussian mixture's
    generator keys): its training size, or None when a ``data.*`` key was refused by its rule."""
    from landscape import data as data_mod

    if any(k.startswith("data.") for k in bad):
        return None
    return data_mod.full_train_size(d)


#: The checker of each dataset (``data.name``): it appends the dataset's own problems and returns the size of
#: its full training split (None when unknown after a problem). A dataset without an entry has no checks.
DATASET_CHECKS: dict[str, Callable[[list[str], Any, set[str]], Optional[int]]] = {
    "cifar10": _cifar10_size,
    "digits": _generated_size,
    "gaussian": _generated_size,
    "mnist1d": _generated_size,
}


def _check_data(p: list[str], d: Any, bad: set[str]) -> int | None:
    """``data.*``: the dataset's name and its own checks (``DATASET_CHECKS``), then ``data.subsample`` against
    the dataset's training size. Returns the training-set size the cell will use (None when unknown)."""
    from landscape import data as data_mod

    _choice(p, "data.name", d.name, data_mod.DATASETS)
    check = DATASET_CHECKS.get(d.name)
    n_full = check(p, d, bad) if check is not None else None
    s = d.subsample
    if "data.subsample" in bad:
        return None
    if isinstance(s, float) and s > 1 and not s.is_integer():
        p.append(f"data.subsample={s!r}: expected a fraction in (0, 1] or an integer count >= 1")
        return None
    if n_full is None:
        return None
    n_train = data_mod.resolve_count(s, n_full)
    if n_train > n_full:
        p.append(f"data.subsample={s!r}: asks for {n_train} samples, data.name={d.name} has {n_full} training samples")
        return None
    return n_train


def _check_model(p: list[str], m: Any) -> None:
    """``model.*``: the model kind and its activation."""
    from landscape.models import ACTIVATIONS, MODELS

    _choice(p, "model.name", m.name, MODELS)
    _choice(p, "model.activation", m.activation, tuple(ACTIVATIONS))


def _check_train(p: list[str], t: Any, d: Any, n_train: int | None, bad: set[str]) -> None:
    """``train.*``: loss, schedule and vectorize choices, distinct seeds, and a batch size no larger than the
    training set (``n_train``, when known)."""
    from landscape.training import LOSSES, SCHEDULES

    _choice(p, "train.loss", t.loss, LOSSES)
    _choice(p, "train.schedule", t.schedule, SCHEDULES)
    _choice(p, "train.vectorize", t.vectorize, ("auto", "on", "off"))
    seeds = list(t.seeds)
    if "train.seeds" not in bad and len(set(seeds)) != len(seeds):
        p.append(f"train.seeds={seeds!r}: expected a non-empty list of distinct integers >= 0")
    bs = t.batch_size
    if "train.batch_size" not in bad and bs != "full" and n_train is not None and bs > n_train:
        p.append(
            f"train.batch_size={bs}: expected at most the training-set size {n_train} (data.name={d.name} "
            f"with data.subsample={d.subsample}) or 'full'"
        )


def _check_run(p: list[str], cfg: Any) -> None:
    """The root keys of the run: ``sweep_name`` (a plain directory name) and ``device``."""
    name = str(cfg.sweep_name)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.=,+-]*", name) or ".." in name or len(name) > MAX_NAME:
        p.append(
            f"sweep_name={name!r}: expected a plain name of at most {MAX_NAME} characters (letters, digits, "
            "_ . = , + -; no '/' or '..'): it names a directory under the outputs root; to write elsewhere "
            "give hydra.sweep.dir=/absolute/path"
        )
    dev = str(cfg.device)
    if not (dev in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", dev)):
        p.append(f"device={dev!r}: expected auto, cpu, cuda or cuda:N")


def _check_phase(p: list[str], phase: Any) -> None:
    """``phase.*`` (``landscape-phase`` settings): the threshold preset, the colour limits, the axes and facet
    (knob columns of the rows) and the ``select`` items."""
    _choice(p, "phase.thresholds", phase.thresholds, ("paper", "calibrate"))  # landscape.phase.THRESHOLD_PRESETS
    _choice(p, "phase.limits", phase.limits, ("data", "paper"))
    knobs = [name for name, _ in knob_fields()] + ["data.n_train", "model.n_params"]  # + results.schema.DERIVED
    for key in ("x", "y", "facet"):
        value = phase[key]
        if value is not None and str(value) not in knobs:
            p.append(f"phase.{key}={value!r}: expected a knob column of the rows: {', '.join(knobs)}")
    select = list(phase.get("select") or [])
    if select:
        from landscape.settings_choice import parse_select

        try:
            parse_select([str(v) for v in select])
        except (KeyError, ValueError) as exc:
            p.append(f"phase.select={select!r}: {str(exc).strip(chr(34) + chr(39))}")


# -------------------------------------------------------------------------------------------- value rules
MAX_THREADS = 4096
"""Upper bound of ``threads`` wherever the machine is unknown (SLURM); local jobs: this machine's CPU count."""
MAX_NAME = 128
"""Longest ``sweep_name``: it names a directory (most file systems allow 255 bytes per name)."""
MAX_DEPTH = 1000
"""Deepest ``model.depth``: a plain stack deeper than this passes no signal at PyTorch's default initialisation
(and one SGD step of a depth-10000 MLP takes seconds); a CNN doubles its channels at every block."""


# The rules of the root config's keys (data, model, train, phase, the root's own): one entry per key whose values
# are narrower than its type's (see ``bounds``). A metric family's settings carry their rules as metadata of
# their ``Config`` fields (``landscape.rules.rule``), checked by the metrics contract (``Family.problems``).
VALUE_RULES: dict[str, Rule] = {
    # data
    "data.subsample": nums(0.0, lo_open=True, note="a fraction in (0, 1] or an integer count >= 1"),
    "data.label_noise": FRACTION,
    "data.num_samples": ints(10),
    "data.n_train": ints(1),
    "data.n_test": ints(1),
    "data.dim": ints(1),
    "data.n_classes": ints(2),
    "data.separation": nums(0.0),
    # model
    "model.width": ints(1),
    "model.depth": ints(1, MAX_DEPTH, note="deeper plain stacks pass no signal at the default initialisation"),
    # train
    "train.lr": nums(0.0, lo_open=True),
    "train.momentum": FRACTION,
    "train.weight_decay": nums(0.0),
    "train.lr_decay": nums(0.0, lo_open=True),
    "train.lr_milestones": ints(1, items=True, note="epochs"),
    "train.seeds": ints(0, items=True, min_items=1),
    "train.batch_size": ints(1, also=("full",)),
    "train.epochs": ints(1),
    "train.steps": ints(1, null=True),
    "train.checkpoint_every": ints(1, note="epochs"),
    # root
    "threads": ints(1, MAX_THREADS, note="CPU threads of the job"),
    # phase (analysis settings of the sweep)
    "phase.train_loss": nums(0.0, null=True, note="nats"),
    "phase.train_error": nums(0.0, 100.0, null=True, note="% of the training set"),
    "phase.mc_underfit": nums(null=True, note="percentage points"),
    "phase.mc_barrier": nums(null=True, note="percentage points"),
    "phase.cka": nums(0.0, 1.0, null=True),
    "phase.uncertain_below": nums(0.0, 1.0),
    "phase.bootstrap": ints(1),
}


def bounds() -> dict[str, Rule]:
    """``{dotted key: Rule}`` of every leaf key of the schema (``LandscapeConfig``: data, model, train, phase,
    the root keys and each metric family's ``Config``) that has one: its field's ``metadata["rule"]`` (the metric
    families' settings) or its ``VALUE_RULES`` entry, else the rule of its type (an integer in 0 .. 2**63-1, a
    finite number; strings and booleans: none)."""
    root = _build_root()
    if "bounds" in root:  # built once per schema (a registered family rebuilds the schema)
        return root["bounds"]
    out: dict[str, Rule] = {}

    def walk(cls: type, prefix: str) -> None:
        import typing

        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            name = f"{prefix}{f.name}"
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
            if is_dataclass(default):
                walk(type(default), f"{name}.")
                continue
            declared = VALUE_RULES.get(name) if "rule" not in f.metadata else None
            rule = declared or field_rule(f, hints.get(f.name, f.type))
            if rule is not None:
                out[name] = rule

    walk(root["LandscapeConfig"], "")
    root["bounds"] = out
    return out


def _family_key(key: str) -> bool:
    """Whether ``key`` is a setting of a metric family (``metrics.<family>.<field>``: the contract checks it)."""
    return key.startswith("metrics.") and key.count(".") >= 2


def bound_problems(cfg: Any) -> list[tuple[str, str]]:
    """``(key, message)`` for every leaf of ``cfg`` outside its rule (``bounds``), but the metric families'
    settings: those are the metrics contract's to check (``landscape.metrics.Family.problems``), for the
    families that run."""
    nodes: dict[str, Any] = {}  # parent key -> its values as plain containers (read once)
    out = []
    for key, rule in bounds().items():
        if _family_key(key):
            continue
        parent, _, leaf = key.rpartition(".")
        if parent not in nodes:
            node = _select(cfg, parent) if parent else _ABSENT
            nodes[parent] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        node = nodes[parent]
        if not parent:
            value = cfg.get(leaf, _ABSENT) if hasattr(cfg, "get") else getattr(cfg, leaf, _ABSENT)
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        else:
            value = node.get(leaf, _ABSENT) if isinstance(node, dict) else getattr(node, leaf, _ABSENT)
        if value is _ABSENT or rule.accepts(value):
            continue
        out.append((key, f"{key}={value!r}: expected {rule.describe()}"))
    return out


_ABSENT = object()


def _select(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = (
            node.get(part, _ABSENT)
            if isinstance(node, dict) or OmegaConf.is_dict(node)
            else getattr(node, part, _ABSENT)
        )
        if node is _ABSENT or node is None:
            return node
    return node


# ------------------------------------------------------------------------------------ launch-time checks
def _input_spec(d: Any) -> tuple[tuple[int, ...], int] | None:
    """``(input_shape, n_classes)`` of a dataset from its config alone (None if unknown)."""
    if d.name == "digits":
        return (1, 8, 8), 10
    if d.name == "mnist1d":
        return (1, 40), 10
    if d.name == "gaussian":
        return (int(d.dim),), int(d.n_classes)
    if d.name == "cifar10":
        return (3, 32, 32), 10
    return None


_MODEL_FACTS: dict[str, tuple[int, bool, str | None]] = {}


def model_facts(cfg: Any) -> tuple[int, bool, str | None]:
    """``(n_parameters, has_batch_norm, why it cannot be trained vectorized)`` of the cell's model, built on
    the ``meta`` device (no memory is allocated); cached per model config and input shape."""
    import json as _json

    import torch

    from landscape.models import build_model, has_batch_norm, n_parameters
    from landscape.vectorized import unsupported_reason

    spec = _input_spec(cfg.data)
    key = _json.dumps([OmegaConf.to_container(cfg.model, resolve=True), spec], sort_keys=True, default=str)
    if key not in _MODEL_FACTS:
        with torch.device("meta"):
            model = build_model(cfg.model, spec[0], spec[1])
        _MODEL_FACTS[key] = (n_parameters(model), has_batch_norm(model), unsupported_reason(model))
    return _MODEL_FACTS[key]


def model_size(cfg: Any) -> tuple[int, int] | None:
    """``(n_parameters, activation values per sample)`` of the cell's model, counted from ``model.*`` and the
    input shape alone, without building it (exact parameter counts of ``mlp`` and ``cnn``; ``resnet18`` is built
    on the ``meta`` device); activation values: every layer's output for one input sample (what a training
    step keeps for its backward pass). None when the input shape is unknown."""
    spec = _input_spec(cfg.data)
    if spec is None:
        return None
    shape, n_classes = spec
    m = cfg.model
    w, depth = int(m.width), int(m.depth)
    if m.name == "mlp":
        fan_in = math.prod(shape)
        params = (
            depth * w
            + (fan_in * w + (depth - 1) * w * w if depth else 0)
            + (w if depth else fan_in) * n_classes
            + n_classes
        )
        return params, 2 * depth * w + n_classes
    if m.name == "cnn":
        shape = shape if len(shape) >= 2 else (1, *shape)
        channels, dims, kernel = shape[0], list(shape[1:]), 3 ** (len(shape) - 1)
        params = acts = 0
        bn = bool(m.batch_norm)
        for i in range(depth):
            out = w * 2**i
            params += channels * out * kernel + (2 * out if bn else out)
            area = math.prod(dims)
            acts += (3 if bn else 2) * out * area
            if min(dims) >= 4:
                dims = [d // 2 for d in dims]
                acts += out * math.prod(dims)
            channels = out
            if params > 2**80:  # far beyond any machine: stop counting
                break
        return params + channels * n_classes + n_classes, acts
    n_params = model_facts(cfg)[0]
    return n_params, 0


def training_bytes(cfg: Any, n_params: int, activations: int = 0, n_train: int | None = None) -> int:
    """Rough memory (bytes) to train the cell's seeds: float32 weights, gradients, momentum and a spare
    copy per model (16 bytes per parameter), for every seed trained at once (all, if vectorized), plus the
    float32 ``activations`` (values per sample) of one training batch (``n_train`` samples for ``full``)."""
    together = len(list(cfg.train.seeds)) if str(cfg.train.vectorize) == "on" else 1
    bs = cfg.train.batch_size
    batch = (n_train or 0) if bs == "full" else int(bs)
    return 16 * n_params * together + 4 * activations * batch * together


def _train_size(cfg: Any) -> int | None:
    try:
        from landscape import data as data_mod

        return data_mod.resolve_count(cfg.data.subsample, data_mod.full_train_size(cfg.data))
    except Exception:  # noqa: BLE001 - unknown (e.g. CIFAR-10 not on this machine): the batch is not counted
        return None


def launch_problems(cfg: Any, local: bool, memory_bytes: int | None = None, cpus: int | None = None) -> list[str]:
    """Problems that depend on the model and the machine, checked at planning (``validate`` passed):
    a model that does not fit in memory (``memory_bytes``: what one job may use, e.g. this machine's RAM for
    local launches; parameter count and activations of one training batch from ``model_size``, without
    building the model); ``train.vectorize=on`` with a model that cannot be stacked; ``threads`` beyond the
    CPUs of the machine (``cpus``; default: this machine's where the jobs run here); ``metrics.cka.layer``
    that names no module of the model; ``device=cuda`` (or ``cuda:N``) where the jobs run on this machine and
    it has no such GPU."""
    p: list[str] = []
    if cpus is None and local:
        cpus = os.cpu_count()
    if cpus is not None and _is_int(cfg.threads) and cfg.threads > cpus:
        p.append(f"threads={cfg.threads}: expected at most the {cpus} CPUs of the machine that runs the jobs")
    if _input_spec(cfg.data) is None:
        return p
    m = cfg.model
    try:
        size = model_size(cfg)
    except Exception as exc:  # noqa: BLE001 - e.g. a width that makes the architecture impossible
        return [*p, f"model.name={m.name}, model.width={m.width}: cannot build the model ({exc})"]
    if size is not None and memory_bytes is not None:
        n_params, acts = size
        on_cpu = str(cfg.device) == "cpu" or (str(cfg.device) == "auto" and local and not _cuda_here())
        need = training_bytes(cfg, n_params, acts if on_cpu else 0, _train_size(cfg) if on_cpu else None)
        if need > memory_bytes:
            p.append(
                f"model.width={m.width}, model.depth={m.depth}: the {m.name} has {n_params:,} parameters, "
                f"about {need / 2**30:.1f} GiB to train{' (weights and one batch of activations)' if on_cpu else ''}, "
                f"more than the {memory_bytes / 2**30:.1f} GiB available"
            )
            return p  # not built, not even on the meta device
    try:
        n_params, _, reason = model_facts(cfg)
    except Exception as exc:  # noqa: BLE001 - any failure to build is a planning error naming the model
        return [*p, f"model.name={m.name}, model.width={m.width}: cannot build the model ({exc})"]
    if str(cfg.train.vectorize) == "on" and reason is not None:
        p.append(f"train.vectorize=on: cannot train {m.name} seeds together: {reason}; use train.vectorize=auto or off")
    cka = cfg.metrics.get("cka") if "metrics" in cfg else None
    if cka is not None and cka.enabled is not False and str(cka.features) == "layer" and cka.layer:
        modules = _module_names(cfg)
        if str(cka.layer) not in modules:
            p.append(
                f"metrics.cka.layer={cka.layer!r}: not a module of the {m.name}; its modules: "
                f"{', '.join(modules[:40])}{' ...' if len(modules) > 40 else ''}"
            )
    dev = str(cfg.device)
    if local and dev.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.append(f"device={dev!r}: CUDA is not available on this machine; use device=cpu or auto")
        elif ":" in dev and dev.split(":", 1)[1].isdigit() and int(dev.split(":", 1)[1]) >= torch.cuda.device_count():
            p.append(f"device={dev!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return p


def _cuda_here() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _module_names(cfg: Any) -> list[str]:
    """Names of the cell model's modules (``named_modules``), built on the ``meta`` device."""
    import torch

    from landscape.models import build_model

    spec = _input_spec(cfg.data)
    with torch.device("meta"):
        model = build_model(cfg.model, spec[0], spec[1])
    return [name for name, _ in model.named_modules() if name]


def unknown_keys(cfg: Any, cls: type | None = None, prefix: str = "") -> list[tuple[str, list[str]]]:
    """``(dotted key, known sibling keys)`` of every key of ``cfg`` that the schema (``LandscapeConfig``) lacks:
    Hydra's ``+key=value`` adds keys to a structured config, so a typo behind ``+`` would pass silently."""
    cls = cls or _build_root()["LandscapeConfig"]
    out: list[tuple[str, list[str]]] = []
    if not OmegaConf.is_dict(cfg):
        return out
    fmap = {f.name: f for f in fields(cls)}
    for key in cfg.keys():
        if prefix == "" and key == "hydra":
            continue
        name = f"{prefix}{key}"
        if key not in fmap:
            out.append((name, sorted(fmap)))
            continue
        f = fmap[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if is_dataclass(default):
            out.extend(unknown_keys(cfg[key], type(default), f"{name}."))
    return out


def _schema_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """``{name: (annotation, default)}`` of a schema dataclass (annotations resolved)."""
    import typing

    hints = typing.get_type_hints(cls)
    return {
        f.name: (
            hints.get(f.name, f.type),
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default,
        )  # type: ignore[misc]
        for f in fields(cls)
    }


def schema_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (``LandscapeConfig``): groups (``model``, ``metrics.hessian``) and leaves."""
    cls = cls or _build_root()["LandscapeConfig"]
    out: list[str] = []
    for name, (_, default) in _schema_fields(cls).items():
        out.append(f"{prefix}{name}")
        if is_dataclass(default):
            out.extend(schema_keys(type(default), f"{prefix}{name}."))
    return out


def _lookup(key: str) -> tuple[type | None, str, list[str], Any]:
    """Walk ``key`` down the schema: ``(class holding its leaf, the known part, the keys at the level where the
    walk stopped, the leaf's annotation)``; the class is None where a part is not a key of the schema (the known
    part then ends before it). A key below a leaf typed ``Any`` or ``dict`` is accepted (its class: None, known
    part: the whole key, annotation: ``Any``)."""
    cls: type = _build_root()["LandscapeConfig"]
    parts = key.split(".")
    for i, part in enumerate(parts):
        level = _schema_fields(cls)
        if part not in level:
            return None, ".".join(parts[:i]), sorted(level), None
        annotation, default = level[part]
        if is_dataclass(default):
            cls = type(default)
            continue
        if i == len(parts) - 1:
            return cls, key, sorted(level), annotation
        if annotation is Any or annotation is dict or str(annotation).startswith(("dict", "typing.Dict")):
            return None, key, [], Any
        return None, ".".join(parts[: i + 1]), [], annotation  # a value, not a group: nothing below it
    return cls, key, sorted(_schema_fields(cls)), None  # a group itself (e.g. ``model``)


def unknown_key_message(key: str, added: bool = False) -> str | None:
    """None if ``key`` (dotted) is a key of the config schema, else one message naming it, the nearest known
    keys ("did you mean") and the keys of the group it was written under; ``added``: it came with ``+``.

    The one place every key typo is explained: an override on the command line (fixed or swept, ``landscape``
    refuses it before Hydra composes anything), a swept key of a sweep file (``hydra.sweeper.params``: the
    sweeper, before planning), and a key added with ``+`` (``validate``)."""
    import difflib

    cls, known, level, annotation = _lookup(key)
    if cls is not None or (known == key and annotation is Any):
        return None
    if known and key.startswith(known + ".") and not level:  # below a leaf: e.g. model.width.x
        return f"{key}: not a key of the config schema; {known} is a value, not a group of keys"
    parts = key.split(".")
    depth = len(known.split(".")) if known else 0
    where = known or "the root"
    rest = parts[depth + 1 :]
    all_keys = schema_keys()
    near: list[str] = []  # the group's keys like the unknown part; else whole keys like it, keys of that leaf name
    ratio = {m: difflib.SequenceMatcher(None, parts[depth], m).ratio() for m in level}
    best = max(ratio.values(), default=0.0)
    for match in sorted((m for m in level if ratio[m] >= max(0.7, best - 0.1)), key=lambda m: -ratio[m])[:2]:
        guess = ".".join([*([known] if known else []), match, *rest])
        near.append(guess if guess in all_keys or not rest else ".".join([*([known] if known else []), match]))
    if not near:
        near += difflib.get_close_matches(key, all_keys, n=2, cutoff=0.8)
        by_leaf: dict[str, list[str]] = {}
        for k in all_keys:
            by_leaf.setdefault(k.rpartition(".")[2], []).append(k)
        for leaf in difflib.get_close_matches(parts[-1], list(by_leaf), n=2, cutoff=0.8):
            near += by_leaf[leaf][:2]
    near = [k for k in dict.fromkeys(near) if k != key][:3]
    text = f"{key}: not a key of the config schema" + (" (added with '+')" if added else "")
    text += f"; did you mean {' or '.join(near)}?" if near else "."
    return text + f" Keys of {where}: {', '.join(level)}"


def _type_words(annotation: Any) -> str:
    """A type annotation in words (``float`` -> ``a number``)."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return f"null or {_type_words(args[0])}"
    if typing.get_origin(annotation) is list:
        inner = typing.get_args(annotation)
        return f"a list of {_type_words(inner[0]).removeprefix('a ').removeprefix('an ')}s" if inner else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        annotation, str(annotation)
    )


def value_message(key: str, value: Any) -> str | None:
    """None if ``value`` has the type of the schema's leaf ``key`` (converted as Hydra converts an override),
    else a message naming the key, the value and what is allowed (the key's bound, ``bounds``, where it has
    one). Bounds, choices and the rules that tie keys together are ``validate``'s, per cell, so that a grid's
    every bad value is listed at once."""
    from omegaconf.errors import OmegaConfBaseException

    cls, known, _, annotation = _lookup(key)
    if cls is None or known != key or (isinstance(value, str) and "${" in value):  # interpolations: Hydra's
        return None
    node = OmegaConf.structured(cls)
    try:
        node[key.rpartition(".")[2]] = value
    except (OmegaConfBaseException, ValueError, TypeError):
        rule = bounds().get(key)
        return f"{key}={value!r}: expected {rule.describe() if rule is not None else _type_words(annotation)}"
    return None


def override_problems(overrides: Sequence[str], is_group: Any = None) -> list[str]:
    """Every key typo and value of a wrong type among command-line overrides (``key=value``, swept
    ``key=a,b`` or ``range(...)`` too), one message per key (see ``unknown_key_message`` and ``value_message``).
    ``is_group(name)``: whether ``name`` is a config group (``data``, ``sweep``: their options are Hydra's to
    check). ``hydra`` overrides and deletions (``~key``) are left to Hydra. Raises nothing: an override Hydra's
    parser refuses is left to Hydra, which names it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out: list[str] = []
    seen: set[str] = set()
    for line in overrides:
        try:
            ov = parser.parse_overrides([str(line)])[0]
        except Exception:  # noqa: BLE001 - a syntax error: Hydra's own message names it
            continue
        key = ov.key_or_group
        if ov.is_hydra_override() or ov.is_delete() or ov.package is not None or key in seen:
            continue
        if is_group is not None and is_group(key):
            continue
        msg = unknown_key_message(key, added=ov.is_add() or ov.is_force_add())
        if msg is not None:
            out.append(msg)
            seen.add(key)
            continue
        try:
            values = list(ov.sweep_iterator()) if ov.is_sweep_override() else [ov.value()]
        except Exception:  # noqa: BLE001 - e.g. an interval sweep: no values to check here
            values = []
        bad: dict[str, list[str]] = {}  # what is allowed -> the values that are not
        for value in values:
            msg = value_message(key, value)
            if msg is not None:
                written, _, allowed = msg.partition(": expected ")
                bad.setdefault(allowed, []).append(written.partition("=")[2])
        for allowed, written in bad.items():  # one message per key and reason, naming every bad value
            out.append(f"{key}={', '.join(written)}: expected {allowed}")
        if bad:
            seen.add(key)
    return out


def check(cfg: DictConfig | Any, where: str = "") -> None:
    """Raise ``ConfigError`` listing every problem of ``cfg`` (see ``validate``)."""
    problems = validate(cfg)
    if problems:
        raise ConfigError(problems, where)


# -------------------------------------------------------------------------------------------- knob names
def leaf_fields(cls: type, prefix: str) -> list[tuple[str, Any]]:
    """``(dotted_name, annotation)`` of every leaf field of a (nested) config dataclass."""
    out: list[tuple[str, Any]] = []
    for f in fields(cls):
        name = f"{prefix}.{f.name}"
        typ = f.type
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if is_dataclass(default):
            out.extend(leaf_fields(type(default), name))
        else:
            out.append((name, typ))
    return out


def knob_fields() -> list[tuple[str, Any]]:
    """``(dotted name, annotation)`` of every knob of a cell: the leaves of the data, model and train configs,
    the seed list excepted (a cell's seeds are its rows, not a knob). ``landscape.results.schema`` types them as
    the rows' knob columns."""
    return [
        (name, typ)
        for cls, prefix in ((DataConfig, "data"), (ModelConfig, "model"), (TrainConfig, "train"))
        for name, typ in leaf_fields(cls, prefix)
        if name != "train.seeds"
    ]


def semantic_config(cfg: DictConfig | Any) -> dict[str, Any]:
    """The part of a cell's config that defines what is trained: ``data``, ``model`` and ``train`` without
    the seed list and the checkpoint interval. ``train.vectorize`` stays in: seeds trained together agree with
    serial training to float rounding per step, but chaotic small-batch SGD amplifies that over many steps, so
    the two modes are different cells (same config, same numbers)."""
    out = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "train")}
    for k in ("seeds", "checkpoint_every"):
        out["train"].pop(k, None)  # type: ignore[union-attr]
    return out
