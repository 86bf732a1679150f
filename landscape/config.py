"""Typed configuration of a grid cell: dataclass schemas registered in Hydra's ConfigStore, and validation.

The config groups in ``conf/`` (``data``, ``model``, ``train``) fill these schemas (``metrics`` is no group: its
defaults are the metric families' ``Config`` dataclasses); a typo in a key is refused by Hydra itself (struct
mode). Each option of the ``data`` and ``model`` groups (a dataset, a model kind) has a config class of its own
(``register_option``: a subclass of ``DataConfig``/``ModelConfig``, stored in Hydra's ConfigStore as
``schema/<group>/<name>`` and pulled in by ``conf/<group>/<name>.yaml``), so a cell's config holds only the keys
of its options; a dataset's checks are its class methods. ``validate`` checks the values and returns every
problem as a message naming the key, the value and what is allowed; ``check`` raises ``ConfigError`` with all of
them. The value rules (``landscape.rules``) of the root config's keys are declared once (``VALUE_RULES``; an
option's keys carry theirs in their fields' metadata; keys without a rule get their type's: integers in
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

from omegaconf import MISSING, DictConfig, OmegaConf

from landscape.rules import (  # noqa: F401 - FLOAT32_MAX, INT64_MAX re-exported: the caps of every number
    FLOAT32_MAX,
    FRACTION,
    INT64_MAX,
    Rule,
    choices_of,
    field_rule,
    ints,
    nums,
    one_of,
)
from landscape.rules import rule as with_rule

_SUBSAMPLE = "a fraction in (0, 1] or an integer count >= 1"


# ------------------------------------------------------------------------------------ data and model options
_ROOT: dict[str, Any] = {}  # the built classes, and their bounds (``bounds``)

MAX_DEPTH = 1000
"""Deepest ``model.depth``: a plain stack deeper than this passes no signal at PyTorch's default initialisation
(and one SGD step of a depth-10000 MLP takes seconds); a CNN doubles its channels at every block."""

_DEPTH = ints(1, MAX_DEPTH, note="deeper plain stacks pass no signal at the default initialisation")
_ACTIVATION = one_of(choices_of("landscape.models", "ACTIVATIONS"))

#: The options of the ``data`` and ``model`` groups: ``{group: {option name: its config class}}``, filled by
#: ``register_option`` in registration order (the order of the rows' knob columns).
OPTIONS: dict[str, dict[str, type]] = {"data": {}, "model": {}}


@dataclass
class DataConfig:
    """``data.*``: the keys of every dataset (each dataset is a subclass with its own keys, ``OPTIONS["data"]``).
    ``name``: the dataset, chosen with ``data=NAME`` (the config group); ``subsample``: fraction in (0, 1] or
    a count >= 1 of the training split; ``label_noise``: fraction in [0, 1) of training labels replaced by
    another class; ``subsample_seed``/``noise_seed``: the seeds of the subset and of the noise.

    A dataset's own checks are its class methods: ``train_size`` (the size of its full training split, from
    the config alone), ``input_spec`` (input shape and class count) and ``check`` (its problems)."""

    name: str = field(default=MISSING, metadata=with_rule(one_of(lambda: tuple(OPTIONS["data"]))))
    subsample: Any = field(default=1.0, metadata=with_rule(nums(0.0, lo_open=True, note=_SUBSAMPLE)))
    label_noise: float = field(default=0.0, metadata=with_rule(FRACTION))
    subsample_seed: int = 0
    noise_seed: int = 0

    @classmethod
    def train_size(cls, d: Any) -> int:
        """Number of samples of the dataset's full training split, known from its config node ``d`` alone."""
        raise NotImplementedError(cls.__name__)

    @classmethod
    def input_spec(cls, d: Any) -> tuple[tuple[int, ...], int]:
        """``(input shape of one sample, number of classes)`` of the dataset of the config node ``d``."""
        raise NotImplementedError(cls.__name__)

    @classmethod
    def check(cls, d: Any, bad: set[str]) -> tuple[list[str], int | None]:
        """The dataset's own problems (``"key=value: what is allowed"``) beyond its keys' rules, and the size
        of its full training split (None when unknown after a problem). ``bad``: keys its rules refused. By
        default: no problem, the size from ``train_size`` (None when a ``data.*`` key was refused)."""
        if any(k.startswith("data.") for k in bad):
            return [], None
        return [], cls.train_size(d)


@dataclass
class ModelConfig:
    """``model.*``: the keys of every model kind (each kind is a subclass with its own keys,
    ``OPTIONS["model"]``). ``name``: the kind, chosen with ``model=NAME`` (the config group); ``width``: its
    width (units of a hidden layer, channels of the first block)."""

    name: str = field(default=MISSING, metadata=with_rule(one_of(lambda: tuple(OPTIONS["model"]))))
    width: int = field(default=32, metadata=with_rule(ints(1)))


def register_option(cls: type) -> type:
    """Register ``cls`` (a subclass of ``DataConfig`` or ``ModelConfig`` whose ``name`` default names it) as an
    option of its group: ``data=NAME`` selects it (a file ``conf/<group>/NAME.yaml`` pulls in its schema, which
    ``register_configs`` stores as ``schema/<group>/NAME``), ``validate`` runs its checks, the rows get its keys
    as columns. Usable as a class decorator."""
    group = "data" if issubclass(cls, DataConfig) else "model" if issubclass(cls, ModelConfig) else None
    name = cls.__dataclass_fields__["name"].default if is_dataclass(cls) else MISSING
    if group is None or not isinstance(name, str) or name == MISSING:
        raise TypeError(f"{cls.__name__}: expected a dataclass subclass of DataConfig or ModelConfig with a name")
    OPTIONS[group][name] = cls
    _ROOT.clear()
    for listener in _LISTENERS:
        listener()
    return cls


_LISTENERS: list[Callable[[], None]] = []


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever an option is registered (for what is derived from ``OPTIONS``: the rows'
    knob columns, ``landscape.results.schema``)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def option_class(group: str, node: Any) -> type | None:
    """The config class of the option a ``data``/``model`` config ``node`` holds: its ``name``'s, provided the
    node has every key of that class (``data.name=gaussian`` written over a digits node does not); else None."""
    cls = OPTIONS[group].get(str(node.get("name")) if hasattr(node, "get") else None)
    if cls is None or any(f.name not in node for f in fields(cls)):
        return None
    return cls


@register_option
@dataclass
class DigitsConfig(DataConfig):
    """scikit-learn's 8x8 digits (1797 images, 10 classes): 1437 training / 360 test images; ``split_seed``:
    the seed of that split."""

    name: str = "digits"
    split_seed: int = 0

    @classmethod
    def train_size(cls, d: Any) -> int:
        from landscape import data as data_mod

        return data_mod.DIGITS_N_IMAGES - data_mod.DIGITS_N_TEST

    @classmethod
    def input_spec(cls, d: Any) -> tuple[tuple[int, ...], int]:
        return (1, 8, 8), 10


@register_option
@dataclass
class Mnist1dConfig(DataConfig):
    """MNIST-1D (Greydanus 2020), generated offline from the mnist1d package's templates: ``num_samples``
    sequences of 40 values, 10 classes, split 80/20 into training and test; ``generator_seed``: the
    generator's seed."""

    name: str = "mnist1d"
    num_samples: int = field(default=5000, metadata=with_rule(ints(10)))
    generator_seed: int = 0

    @classmethod
    def train_size(cls, d: Any) -> int:
        from landscape import data as data_mod

        return data_mod.mnist1d_train_size(int(d.num_samples))

    @classmethod
    def input_spec(cls, d: Any) -> tuple[tuple[int, ...], int]:
        return (1, 40), 10


@register_option
@dataclass
class GaussianConfig(DataConfig):
    """A synthetic mixture of ``n_classes`` isotropic unit Gaussians in ``dim`` dimensions, class means at
    distance ``separation`` from the origin (drawn by ``generator_seed``); ``n_train`` training and ``n_test``
    test samples (the row's ``data.n_train`` column holds the training samples kept after ``subsample``)."""

    name: str = "gaussian"
    n_train: int = field(default=1000, metadata=with_rule(ints(1)))
    n_test: int = field(default=1000, metadata=with_rule(ints(1)))
    dim: int = field(default=16, metadata=with_rule(ints(1)))
    n_classes: int = field(default=4, metadata=with_rule(ints(2)))
    separation: float = field(default=3.0, metadata=with_rule(nums(0.0)))
    generator_seed: int = 0

    @classmethod
    def train_size(cls, d: Any) -> int:
        return int(d.n_train)

    @classmethod
    def input_spec(cls, d: Any) -> tuple[tuple[int, ...], int]:
        return (int(d.dim),), int(d.n_classes)


@register_option
@dataclass
class Cifar10Config(DataConfig):
    """CIFAR-10 from a local directory ``root`` holding its python batches (data_batch_1..5, test_batch):
    50000 training / 10000 test images of 3x32x32, 10 classes; nothing is downloaded."""

    name: str = "cifar10"
    root: Optional[str] = None

    @classmethod
    def train_size(cls, d: Any) -> int:
        from landscape import data as data_mod

        return data_mod.cifar10_train_size(str(d.root))

    @classmethod
    def input_spec(cls, d: Any) -> tuple[tuple[int, ...], int]:
        return (3, 32, 32), 10

    @classmethod
    def check(cls, d: Any, bad: set[str]) -> tuple[list[str], int | None]:
        """``data.root`` must hold the python batches, present and safe to read (their training size is
        counted on disk)."""
        from landscape import data as data_mod

        if not d.root:
            return [
                "data.root=None: CIFAR-10 needs the directory of its python batches "
                "(data.root=/path/to/cifar-10-batches-py)"
            ], None
        missing = data_mod.cifar10_missing_files(d.root)
        if missing:
            return [f"data.root={d.root!r}: missing CIFAR-10 batch files {', '.join(missing)}"], None
        try:
            return [], cls.train_size(d)
        except data_mod.UnsafeFileError as exc:
            return [f"data.root={d.root!r}: {exc}"], None


@register_option
@dataclass
class MlpConfig(ModelConfig):
    """A fully connected network: ``depth`` hidden layers of ``width`` units, each followed by ``activation``."""

    name: str = "mlp"
    width: int = field(default=32, metadata=with_rule(ints(1)))
    depth: int = field(default=2, metadata=with_rule(_DEPTH))
    activation: str = field(default="relu", metadata=with_rule(_ACTIVATION))


@register_option
@dataclass
class CnnConfig(ModelConfig):
    """A convolutional network: ``depth`` blocks of 3x3 convolutions with k, 2k, 4k ... channels (k =
    ``width``), each followed by BatchNorm when ``batch_norm`` and ``activation``, then global average pooling and
    a linear head."""

    name: str = "cnn"
    width: int = field(default=16, metadata=with_rule(ints(1)))
    depth: int = field(default=2, metadata=with_rule(_DEPTH))
    activation: str = field(default="relu", metadata=with_rule(_ACTIVATION))
    batch_norm: bool = False


@register_option
@dataclass
class ResNet18Config(ModelConfig):
    """A CIFAR-style ResNet18 with BatchNorm: four stages of k, 2k, 4k, 8k channels (k = ``width``; 64 is the
    usual ResNet18)."""

    name: str = "resnet18"
    width: int = field(default=64, metadata=with_rule(ints(1)))


def data_config(name: str = "digits", **keys: Any) -> DataConfig:
    """The config of dataset ``name`` with ``keys`` set (e.g. ``data_config("gaussian", n_train=300)``)."""
    return OPTIONS["data"][name](**keys)


def model_config(name: str = "mlp", **keys: Any) -> ModelConfig:
    """The config of model kind ``name`` with ``keys`` set (e.g. ``model_config("cnn", width=4)``)."""
    return OPTIONS["model"][name](**keys)


def _yaml_value(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def options_help(group: str) -> str:
    """The options of ``group`` (``data``/``model``) for ``landscape --help``: one line per option, its name and
    its own keys with their defaults (``KEY=VALUE``); the keys every option has with the same default on a first
    line ``every dataset``/``every model``. Lines after the first are indented by two spaces (as the template's first)."""
    classes = OPTIONS[group]
    shared = {
        f.name: f.default
        for f in fields(DataConfig if group == "data" else ModelConfig)
        if f.name != "name" and all(c.__dataclass_fields__[f.name].default == f.default for c in classes.values())
    }
    rows = [({"data": "every dataset", "model": "every model"}.get(group, group), shared)] if shared else []
    for name, cls in classes.items():
        rows.append((name, {f.name: f.default for f in fields(cls) if f.name != "name" and f.name not in shared}))
    width = max(len(n) for n, _ in rows) + 2
    lines = [
        f"{n:<{width}}" + ("  ".join(f"{k}={_yaml_value(v)}" for k, v in keys.items()) or "(no keys of its own)")
        for n, keys in rows
    ]
    return "\n  ".join(lines)


_UNION: dict[str, type] = {}


def group_keys(group: str) -> type:
    """A dataclass holding every key of every option of ``group`` (``data``/``model``), in registration order,
    each with its first declaration (type, rule): what a dotted key of the group may be before an option is
    chosen (typos of overrides, the rows' knob columns, the value rules)."""
    key = f"{group}:{','.join(OPTIONS[group])}"
    if key not in _UNION:
        from dataclasses import make_dataclass

        specs: dict[str, tuple[str, Any, Any]] = {}
        for cls in (DataConfig if group == "data" else ModelConfig, *OPTIONS[group].values()):
            for f in fields(cls):
                if f.name not in specs:
                    default = MISSING if f.name == "name" else f.default
                    specs[f.name] = (f.name, f.type, field(default=default, metadata=f.metadata))
        union = make_dataclass(f"{group.capitalize()}Keys", list(specs.values()))
        union.__module__ = __name__
        _UNION[key] = union
    return _UNION[key]


def option_keys(group: str) -> dict[str, tuple[str, ...]]:
    """``{key: the options of group that have it}`` for every key of ``group`` (``data``/``model``)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, cls in OPTIONS[group].items():
        for f in fields(cls):
            out[f.name] = (*out.get(f.name, ()), name)
    return out


@dataclass
class TrainConfig:
    """``train.*``. ``batch_size``: an int or ``full`` (full-batch gradient descent); ``steps`` overrides
    ``epochs`` when set; ``schedule``: constant | step (x``lr_decay`` at each epoch of ``lr_milestones``) |
    cosine; ``seeds``: the models of the cell; ``checkpoint_every``: epochs between checkpoints;
    ``vectorize``: train the seeds together (torch.func + vmap) where supported: auto | on | off;
    ``augment``: random crop (4-pixel padding) and horizontal flip of image batches, on the device, seeded by
    the model's seed (landscape.batches); ``precision``: fp32 | tf32 | bf16 of the training steps (Hessian and
    curves stay fp32); ``compile``: ``torch.compile`` the model for its training steps."""

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
    augment: bool = False
    precision: str = "fp32"
    compile: bool = False


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
                ("data", DataConfig, field(default=MISSING)),  # the option of the data group gives its class
                ("model", ModelConfig, field(default=MISSING)),
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
    """Register the root schema as ``base_config`` in Hydra's ConfigStore, and each option's config class as
    ``schema/<group>/<name>`` (what ``conf/<group>/<name>.yaml`` pulls in with its defaults list) (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="base_config", node=_build_root()["LandscapeConfig"])
    for group, options in OPTIONS.items():
        for name, cls in options.items():
            store.store(group=f"schema/{group}", name=name, node=cls)


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
    and the rules that tie keys together: the dataset (``_check_data``: its config class's ``check``),
    the model, training (against the training-set size), the run (``sweep_name``, ``device``), the
    ``landscape-phase`` settings, and the metric families' settings (``landscape.metrics.validate_metrics``)."""
    p: list[str] = [
        unknown_key_message(k, added=True) or _option_key_message(k, cfg, added=True) for k, _ in unknown_keys(cfg)
    ]
    bad = set()  # keys refused by their rules: the rules below that read them are skipped
    for key, msg in bound_problems(cfg):
        p.append(msg)
        bad.add(key)
    n_train = _check_data(p, cfg.data, bad)
    _check_model(p, cfg.model, bad)
    _check_train(p, cfg.train, cfg.data, n_train, bad)
    _check_run(p, cfg)
    if "phase" in cfg:
        _check_phase(p, cfg.phase)

    from landscape.metrics import validate_metrics

    p.extend(validate_metrics(cfg))  # the metric families' settings: their rules and cross-field checks
    return p


def _check_data(p: list[str], d: Any, bad: set[str]) -> int | None:
    """``data.*``: the dataset's own checks (its config class's ``check``; ``data.name`` is checked by its rule),
    then ``data.subsample`` against the dataset's training size. Returns the training-set size the cell will use
    (None when unknown)."""
    from landscape import data as data_mod

    n_full = None
    if "data.name" not in bad:
        cls = _checked_option(p, "data", d)
        if cls is not None:
            problems, n_full = cls.check(d, bad)
            p.extend(problems)
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


def _checked_option(p: list[str], group: str, node: Any) -> type | None:
    """The config class of the option ``node`` holds (``option_class``), or None after appending why not: a
    ``name`` written over another option's node (``data.name=gaussian`` where ``data=digits`` chose the keys)."""
    cls = option_class(group, node)
    if cls is None and str(node.name) in OPTIONS[group]:
        missing = [f.name for f in fields(OPTIONS[group][str(node.name)]) if f.name not in node]
        p.append(
            f"{group}.name={node.name!r}: the {group} config holds the keys of another option (it lacks "
            f"{', '.join(missing)}); choose the option with the config group, {group}={node.name}"
        )
    return cls


def _check_model(p: list[str], m: Any, bad: set[str]) -> None:
    """``model.*``: the node holds the keys of the kind it names (the kind and its keys' values are checked by
    their rules: ``bounds``)."""
    if "model.name" not in bad:
        _checked_option(p, "model", m)


def _check_train(p: list[str], t: Any, d: Any, n_train: int | None, bad: set[str]) -> None:
    """``train.*``: loss, schedule and vectorize choices, distinct seeds, and a batch size no larger than the
    training set (``n_train``, when known)."""
    from landscape.training import LOSSES, SCHEDULES

    _choice(p, "train.loss", t.loss, LOSSES)
    _choice(p, "train.schedule", t.schedule, SCHEDULES)
    _choice(p, "train.vectorize", t.vectorize, ("auto", "on", "off"))
    _choice(p, "train.precision", t.precision, ("fp32", "tf32", "bf16"))
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


# The rules of the root config's keys (train, phase, the root's own): one entry per key whose values are narrower
# than its type's (see ``bounds``). A dataset's or model kind's keys carry their rules as metadata of the fields of
# its config class (``register_option``), and so do a metric family's settings (``landscape.rules.rule``; checked
# by the metrics contract, ``Family.problems``).
VALUE_RULES: dict[str, Rule] = {
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
            default = _field_default(f)
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
    """``(input_shape, n_classes)`` of a dataset from its config alone (its class's ``input_spec``; None if
    unknown)."""
    cls = option_class("data", d)
    return None if cls is None else cls.input_spec(d)


def full_train_size(d: Any) -> int:
    """Size of the full training split of the dataset of the ``data`` config node ``d`` (its class's
    ``train_size``: from the config alone; CIFAR-10: counted on disk)."""
    cls = option_class("data", d)
    if cls is None:
        raise ValueError(f"data.name={d.get('name')!r}: expected one of {', '.join(OPTIONS['data'])} with its keys")
    return cls.train_size(d)


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
    if m.name not in ("mlp", "cnn"):
        return model_facts(cfg)[0], 0
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


def training_bytes(cfg: Any, n_params: int, activations: int = 0, n_train: int | None = None) -> int:
    """Rough memory (bytes) to train the cell's seeds: float32 weights, gradients, momentum and a spare
    copy per model (16 bytes per parameter), for every seed trained at once, plus the float32 ``activations``
    (values per sample) of one training batch (``n_train`` samples for ``full``). Seeds trained at once: all of
    them under ``train.vectorize=on``, and under ``auto`` wherever it may stack them (MLPs; other models unless
    ``device=cpu``: ``landscape.vectorized.auto_stacks`` stacks them on CUDA), else one."""
    mode = str(cfg.train.vectorize)
    may_stack = mode == "on" or (
        mode == "auto" and (str(cfg.model.name) == "mlp" or str(getattr(cfg, "device", "auto")) != "cpu")
    )
    together = len(list(cfg.train.seeds)) if may_stack else 1
    bs = cfg.train.batch_size
    batch = (n_train or 0) if bs == "full" else int(bs)
    return 16 * n_params * together + 4 * activations * batch * together


def _train_size(cfg: Any) -> int | None:
    try:
        from landscape import data as data_mod

        return data_mod.resolve_count(cfg.data.subsample, full_train_size(cfg.data))
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
            sized = ", ".join(f"model.{k}={m[k]}" for k in ("width", "depth") if k in m)
            p.append(
                f"{sized}: the {m.name} has {n_params:,} parameters, "
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


_GROUPS: dict[type, str] = {DataConfig: "data", ModelConfig: "model"}


def _field_default(f: Any) -> Any:
    """The default of a schema dataclass's field; for the root's ``data``/``model`` (no default: the chosen
    option gives the node its class) an instance of ``group_keys``: every key of every option of the group."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default == MISSING and f.type in _GROUPS:
        return group_keys(_GROUPS[f.type])()
    return f.default


def _option_key_message(key: str, cfg: Any = None, added: bool = False, options: Sequence[str] = ()) -> str:
    """The message for ``key`` (``data.K``/``model.K``), a key of some option of its group but not of the one
    chosen (``options``, else the one ``cfg`` holds): the key, the chosen option's keys and the options that have
    it."""
    group, _, leaf = key.partition(".")
    if not options and cfg is not None:
        options = [str(OmegaConf.select(cfg, f"{group}.name"))]
    owners = option_keys(group).get(leaf, ()) if group in OPTIONS else ()
    chosen = [o for o in options if o in OPTIONS.get(group, {})]
    if not chosen or not owners:
        return f"{key}: not a key of the config schema" + (" (added with '+')" if added else "")
    keys = ", ".join(f.name for f in fields(OPTIONS[group][chosen[0]]))
    return (
        f"{key}: not a key of {group}={chosen[0]}" + (" (added with '+')" if added else "") + f"; its keys: {keys}. "
        f"{key} is a key of {', '.join(f'{group}={o}' for o in owners)}"
    )


def unknown_keys(cfg: Any, cls: type | None = None, prefix: str = "") -> list[tuple[str, list[str]]]:
    """``(dotted key, known sibling keys)`` of every key of ``cfg`` that the schema (``LandscapeConfig``; under
    ``data``/``model``: the class of the option the node holds) lacks: Hydra's ``+key=value`` adds keys to a
    structured config, so a typo behind ``+`` would pass silently."""
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
        default = _field_default(fmap[key])
        if is_dataclass(default):
            group = _GROUPS.get(fmap[key].type)
            node_cls = (option_class(group, cfg[key]) if group else None) or type(default)
            out.extend(unknown_keys(cfg[key], node_cls, f"{name}."))
    return out


def _schema_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """``{name: (annotation, default)}`` of a schema dataclass (annotations resolved)."""
    import typing

    hints = typing.get_type_hints(cls)
    return {f.name: (hints.get(f.name, f.type), _field_default(f)) for f in fields(cls)}


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


def override_problems(
    overrides: Sequence[str], is_group: Any = None, options: dict[str, list[str]] | None = None
) -> list[str]:
    """Every key typo and value of a wrong type among command-line overrides (``key=value``, swept
    ``key=a,b`` or ``range(...)`` too), one message per key (see ``unknown_key_message`` and ``value_message``).
    ``is_group(name)``: whether ``name`` is a config group (``data``, ``sweep``: their options are Hydra's to
    check). ``options``: the options of the ``data``/``model`` groups the command line selects
    (``chosen_options``): a key of the group must be a key of each (``data=digits data.n_classes=3`` is refused,
    naming the datasets that have it), and ``data.name``/``model.name`` may only repeat the choice. ``hydra``
    overrides and deletions (``~key``) are left to Hydra. Raises nothing: an override Hydra's parser refuses is
    left to Hydra, which names it."""
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
        group, _, leaf = key.partition(".")
        chosen = [o for o in (options or {}).get(group, []) if o in OPTIONS.get(group, {})]
        if msg is None and chosen and any(leaf not in OPTIONS[group][o].__dataclass_fields__ for o in chosen):
            lacking = [o for o in chosen if leaf not in OPTIONS[group][o].__dataclass_fields__]
            msg = _option_key_message(key, added=ov.is_add() or ov.is_force_add(), options=lacking)
        if msg is not None:
            out.append(msg)
            seen.add(key)
            continue
        try:
            values = list(ov.sweep_iterator()) if ov.is_sweep_override() else [ov.value()]
        except Exception:  # noqa: BLE001 - e.g. an interval sweep: no values to check here
            values = []
        if leaf == "name" and chosen and any(v not in chosen for v in values):
            out.append(
                f"{key}={', '.join(repr(v) for v in values if v not in chosen)}: expected {' or '.join(chosen)}, the "
                f"option {group}= chose (another: {group}=NAME, one of {', '.join(OPTIONS[group])})"
            )
            seen.add(key)
            continue
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


def chosen_options(overrides: Sequence[str], conf_dirs: Sequence[Any]) -> dict[str, list[str]]:
    """The options of the ``data`` and ``model`` groups a command line selects: its ``data=NAME`` overrides (a
    swept ``data=a,b``: each), else the choice of a named sweep it adds (``+sweep=NAME``: that file's
    ``override /data: NAME``), else the primary config's default (``config.yaml`` of the first of ``conf_dirs``
    that has it). A group whose choice cannot be read (an interpolation, an unreadable file) is left out."""
    from pathlib import Path

    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    def defaults_of(name: str) -> dict[str, str]:
        for d in conf_dirs:
            path = Path(d) / f"{name}.yaml"
            if path.is_file():
                try:
                    entries = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
                except (OSError, yaml.YAMLError, AttributeError):
                    return {}
                out = {}
                for e in entries if isinstance(entries, list) else []:
                    for k, v in e.items() if isinstance(e, dict) else []:
                        out[str(k).removeprefix("override").strip().lstrip("/")] = str(v)
                return out
        return {}

    chosen: dict[str, list[str]] = {}
    parser = OverridesParser.create()
    sweeps: list[str] = []
    for line in overrides:
        try:
            ov = parser.parse_overrides([str(line)])[0]
            values = list(ov.sweep_iterator()) if ov.is_sweep_override() else [ov.value()]
        except Exception:  # noqa: BLE001 - a syntax error or an interval sweep: Hydra's to name
            continue
        if ov.key_or_group in OPTIONS and not ov.is_delete():
            chosen[ov.key_or_group] = [str(v) for v in values]
        elif ov.key_or_group == "sweep" and len(values) == 1:
            sweeps.append(str(values[0]))
    found = {**defaults_of("config"), **{k: v for s in sweeps for k, v in defaults_of(f"sweep/{s}").items()}}
    for group in OPTIONS:
        if group not in chosen and group in found and "$" not in found[group]:
            chosen[group] = [found[group]]
    return chosen


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
        default = _field_default(f)
        if is_dataclass(default):
            out.extend(leaf_fields(type(default), name))
        else:
            out.append((name, typ))
    return out


def knob_fields() -> list[tuple[str, Any]]:
    """``(dotted name, annotation)`` of every knob of a cell: the leaves of the data, model and train configs
    (of every option of the data and model groups: ``group_keys``), the seed list excepted (a cell's seeds are
    its rows, not a knob). ``landscape.results.schema`` types them as the rows' knob columns."""
    return [
        (name, typ)
        for cls, prefix in ((group_keys("data"), "data"), (group_keys("model"), "model"), (TrainConfig, "train"))
        for name, typ in leaf_fields(cls, prefix)
        if name != "train.seeds"
    ]


#: The keys (and defaults) of the one flat ``data`` and ``model`` schemas of results schema version 4 and before,
#: which every cell's config held whatever its dataset and model kind: ``semantic_config`` completes a node with
#: those its option lacks, so a cell keeps the ``cell_id`` (and folder) it had then and older sweeps resume.
#: Training keys that came after schema version 4, with the value that means "as before": left out of a cell's
#: id at that value (``semantic_config``).
TRAIN_KEYS_SINCE_V5: dict[str, Any] = {"augment": False, "precision": "fp32", "compile": False}

V4_KEYS: dict[str, dict[str, Any]] = {
    "data": {
        "split_seed": 0,
        "num_samples": 5000,
        "generator_seed": 0,
        "n_train": 1000,
        "n_test": 1000,
        "dim": 16,
        "n_classes": 4,
        "separation": 3.0,
        "root": None,
    },
    "model": {"depth": 2, "activation": "relu", "batch_norm": False},
}


def semantic_config(cfg: DictConfig | Any) -> dict[str, Any]:
    """The part of a cell's config that defines what is trained: ``data``, ``model`` and ``train`` without
    the seed list and the checkpoint interval, ``data`` and ``model`` completed with the keys of ``V4_KEYS``
    their options lack (constants: they change no cell's id, and keep every id what it was before each option
    had a config of its own). ``train.vectorize`` stays in: seeds trained together agree with serial training
    to float rounding per step, but chaotic small-batch SGD amplifies that over many steps, so the two modes are
    different cells (same config, same numbers). Training keys added after version 4 (``TRAIN_KEYS_SINCE_V5``)
    are left out while at their defaults (the training they describe is the one older cells did), so an older
    sweep's cells keep their ids; any other value is in the id."""
    out = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "train")}
    for k in ("seeds", "checkpoint_every"):
        out["train"].pop(k, None)  # type: ignore[union-attr]
    for k, default in TRAIN_KEYS_SINCE_V5.items():
        if k in out["train"] and out["train"][k] == default:  # type: ignore[operator,index]
            out["train"].pop(k)  # type: ignore[union-attr]
    for group, keys in V4_KEYS.items():
        out[group] = {**keys, **out[group]}  # type: ignore[dict-item]
    return out
