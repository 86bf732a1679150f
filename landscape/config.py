"""Typed configuration of a grid cell: dataclass schemas registered in Hydra's ConfigStore, and validation.

The config groups in ``conf/`` (``data``, ``model``, ``train``, ``metrics``) fill these schemas; a typo in a
key is refused by Hydra itself (struct mode). ``validate`` checks the values and returns every problem as a
message naming the key, the value and what is allowed; ``check`` raises ``ConfigError`` with all of them.
Validation needs no data: dataset sizes are known from the config (CIFAR-10: counted on disk once).

Importing this module is cheap (no torch, no metric family): the ``metrics`` schema, built from the
registered families' ``Config`` classes, and the root ``LandscapeConfig`` are made on first use
(``landscape.config.LandscapeConfig``, ``register_configs``); ``validate`` imports what it checks against.
"""

from __future__ import annotations

import math
import re
import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf


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
    is drawn hatched; ``bootstrap``: resamples per cell."""

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


_ROOT: dict[str, type] = {}


def _build_root() -> dict[str, type]:
    """``MetricsConfig`` (``pairs`` + one node per registered family, its ``Config``) and ``LandscapeConfig``."""
    if not _ROOT:
        from dataclasses import make_dataclass

        from landscape.metrics import family_config_classes

        specs: list[tuple[str, Any, Any]] = [
            ("pairs", str, field(default="all")),  # which pairs of seeds the pair families measure: all | chain | star
        ]
        for name, cls in family_config_classes().items():
            specs.append((name, cls, field(default_factory=cls)))
        metrics_cls = make_dataclass("MetricsConfig", specs)
        root = make_dataclass("LandscapeConfig", [
            ("data", DataConfig, field(default_factory=DataConfig)),
            ("model", ModelConfig, field(default_factory=ModelConfig)),
            ("train", TrainConfig, field(default_factory=TrainConfig)),
            ("metrics", metrics_cls, field(default_factory=metrics_cls)),
            ("sweep_name", str, field(default="default")),
            ("device", str, field(default="auto")),
            ("threads", int, field(default=1)),
            ("dry_run", bool, field(default=False)),
            ("phase", PhaseConfig, field(default_factory=PhaseConfig)),  # landscape-phase settings (analysis only)
        ])
        root.__doc__ = _ROOT_DOC
        for cls in (metrics_cls, root):  # importable by name (module __getattr__ below): pickled by reference, so
            cls.__module__ = __name__    # worker processes see the same classes (and dataclasses.MISSING itself)
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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _choice(problems: list[str], key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{key}={value!r}: expected one of {', '.join(allowed)}")


def validate(cfg: DictConfig | Any) -> list[str]:
    """Every problem of a composed cell config, as ``"key=value: what is allowed"`` messages (empty: valid)."""
    from landscape import data as data_mod
    from landscape.models import ACTIVATIONS, MODELS
    from landscape.training import LOSSES, SCHEDULES

    p: list[str] = [f"{k}: not a key of the config schema (added with '+'?); known keys under "
                    f"{k.rpartition('.')[0] or 'the root'}: {', '.join(known)}" for k, known in unknown_keys(cfg)]
    d, m, t = cfg.data, cfg.model, cfg.train

    _choice(p, "data.name", d.name, data_mod.DATASETS)
    if not (_is_number(d.label_noise) and 0.0 <= float(d.label_noise) < 1.0):
        p.append(f"data.label_noise={d.label_noise!r}: expected a fraction in [0, 1)")
    n_full: int | None = None
    if d.name == "cifar10":
        if not d.root:
            p.append("data.root=None: CIFAR-10 needs the directory of its python batches (data.root=/path/to/cifar-10-batches-py)")
        else:
            missing = data_mod.cifar10_missing_files(d.root)
            if missing:
                p.append(f"data.root={d.root!r}: missing CIFAR-10 batch files {', '.join(missing)}")
            else:
                try:
                    n_full = data_mod.full_train_size(d)
                except data_mod.UnsafeFileError as exc:
                    p.append(f"data.root={d.root!r}: {exc}")
    elif d.name == "gaussian":
        for key in ("n_train", "n_test", "dim"):
            if not (_is_int(d[key]) and d[key] >= 1):
                p.append(f"data.{key}={d[key]!r}: expected an integer >= 1")
        if not (_is_int(d.n_classes) and d.n_classes >= 2):
            p.append(f"data.n_classes={d.n_classes!r}: expected an integer >= 2")
        if not (_is_number(d.separation) and d.separation >= 0):
            p.append(f"data.separation={d.separation!r}: expected a number >= 0")
        if not p:
            n_full = data_mod.full_train_size(d)
    elif d.name == "mnist1d":
        if not (_is_int(d.num_samples) and d.num_samples >= 10):
            p.append(f"data.num_samples={d.num_samples!r}: expected an integer >= 10")
        else:
            n_full = data_mod.full_train_size(d)
    elif d.name == "digits":
        n_full = data_mod.full_train_size(d)

    n_train: int | None = None
    s = d.subsample
    if not _is_number(s) or s <= 0 or (isinstance(s, float) and s > 1 and not s.is_integer()):
        p.append(f"data.subsample={s!r}: expected a fraction in (0, 1] or an integer count >= 1")
    elif n_full is not None:
        n_train = data_mod.resolve_count(s, n_full)
        if n_train > n_full:
            p.append(f"data.subsample={s!r}: asks for {n_train} samples, data.name={d.name} has {n_full} training samples")
            n_train = None

    _choice(p, "model.name", m.name, MODELS)
    if not (_is_int(m.width) and m.width >= 1):
        p.append(f"model.width={m.width!r}: expected an integer >= 1")
    if not (_is_int(m.depth) and m.depth >= 1):
        p.append(f"model.depth={m.depth!r}: expected an integer >= 1")
    _choice(p, "model.activation", m.activation, tuple(ACTIVATIONS))

    _choice(p, "train.loss", t.loss, LOSSES)
    _choice(p, "train.schedule", t.schedule, SCHEDULES)
    _choice(p, "train.vectorize", t.vectorize, ("auto", "on", "off"))
    if not (_is_number(t.lr) and t.lr > 0 and math.isfinite(t.lr)):
        p.append(f"train.lr={t.lr!r}: expected a finite number > 0")
    if not (_is_number(t.momentum) and 0.0 <= t.momentum < 1.0):
        p.append(f"train.momentum={t.momentum!r}: expected a number in [0, 1)")
    if not (_is_number(t.weight_decay) and t.weight_decay >= 0):
        p.append(f"train.weight_decay={t.weight_decay!r}: expected a number >= 0")
    if not (_is_number(t.lr_decay) and t.lr_decay > 0):
        p.append(f"train.lr_decay={t.lr_decay!r}: expected a number > 0")
    if any(not _is_int(x) or x < 1 for x in t.lr_milestones):
        p.append(f"train.lr_milestones={list(t.lr_milestones)!r}: expected epochs >= 1")
    if not (_is_int(t.epochs) and t.epochs >= 1):
        p.append(f"train.epochs={t.epochs!r}: expected an integer >= 1")
    if t.steps is not None and not (_is_int(t.steps) and t.steps >= 1):
        p.append(f"train.steps={t.steps!r}: expected null or an integer >= 1")
    if not (_is_int(t.checkpoint_every) and t.checkpoint_every >= 1):
        p.append(f"train.checkpoint_every={t.checkpoint_every!r}: expected an integer >= 1 (epochs)")
    seeds = list(t.seeds)
    if not seeds or any(not _is_int(x) or x < 0 for x in seeds) or len(set(seeds)) != len(seeds):
        p.append(f"train.seeds={seeds!r}: expected a non-empty list of distinct integers >= 0")
    bs = t.batch_size
    if bs == "full":
        pass
    elif not (_is_int(bs) and bs >= 1):
        p.append(f"train.batch_size={bs!r}: expected an integer >= 1 or 'full'")
    elif n_train is not None and bs > n_train:
        p.append(
            f"train.batch_size={bs}: expected at most the training-set size {n_train} (data.name={d.name} "
            f"with data.subsample={s}) or 'full'"
        )

    name = str(cfg.sweep_name)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.=,+-]*", name) or ".." in name:
        p.append(f"sweep_name={name!r}: expected a plain name (letters, digits, _ . = , + -; no '/' or '..'): it "
                 "names a directory under the outputs root; to write elsewhere give hydra.sweep.dir=/absolute/path")
    dev = str(cfg.device)
    if not (dev in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", dev)):
        p.append(f"device={dev!r}: expected auto, cpu, cuda or cuda:N")
    if not (_is_int(cfg.threads) and cfg.threads >= 1):
        p.append(f"threads={cfg.threads!r}: expected an integer >= 1 (CPU threads of the job)")

    if "phase" in cfg:
        _choice(p, "phase.thresholds", cfg.phase.thresholds, ("paper", "calibrate"))  # landscape.phase.THRESHOLD_PRESETS
        _choice(p, "phase.limits", cfg.phase.limits, ("data", "paper"))

    from landscape.metrics import enabled, validate_metrics

    family_msgs = validate_metrics(cfg)
    p.extend(family_msgs)
    mentioned = {m.split("=", 1)[0] for m in family_msgs}
    for fam in enabled(cfg):  # the value rules below, for keys the family's own check did not refuse
        p.extend(m for m in _metric_rule_problems(fam.name, cfg.metrics[fam.name]) if m.split("=", 1)[0] not in mentioned)
    h = cfg.metrics.get("hessian")
    if (h is not None and "metrics.hessian.trace_matvecs" not in mentioned and h.enabled is not False
            and h.trace_method == "hutch++" and _is_int(h.trace_matvecs) and 1 <= h.trace_matvecs < 4):
        p.append(f"metrics.hessian.trace_matvecs={h.trace_matvecs}: Hutch++ needs >= 4 products (or "
                 "metrics.hessian.trace_method=hutchinson)")
    return p


# Value rules of the metric families' settings, checked at planning for every enabled family, for the keys
# their own ``Family.check`` does not refuse (the families add choices and cross-field rules). kind: int>=N | num>0 | num>=0 | frac | list>0
METRIC_RULES: dict[str, dict[str, str]] = {
    "hessian": {"eval_samples": "int>=1", "batch_size": "int>=1", "max_block": "int>=1", "seed": "int>=0",
                "n_top": "int>=1", "tol": "num>0", "max_iter": "int>=1", "trace_matvecs": "int>=1",
                "n_probes": "int>=1", "n_steps": "int>=2", "grid_size": "int>=2"},
    "cka": {"n_samples": "int>=4", "rbf_fraction": "num>0", "batch_size": "int>=0", "seed": "int>=0"},
    "connectivity": {"bends": "int>=1", "epochs": "int>=1", "lr": "num>0", "momentum": "frac",
                     "weight_decay": "num>=0", "batch_size": "int>=1", "n_points": "int>=2", "seed": "int>=0",
                     "checkpoint_every": "int>=1"},
    "training": {"eval_batch_size": "int>=1"},
    "jump_retrain": {"n_jumps": "int>=1", "scales": "list>0", "epochs": "int>=1", "lr": "num>0",
                     "batch_size": "int>=1", "record_every": "int>=1", "projection_dim": "int>=1",
                     "eval_samples": "int>=2", "phate_knn": "int>=1", "phate_decay": "num>0",
                     "phate_random_state": "int>=0", "graph_knn": "int>=1", "persistence_threshold": "num>=0",
                     "seed": "int>=0"},
    "projection_trace": {"n_directions": "int>=2", "epsilon": "num>0", "eval_samples": "int>=1", "seed": "int>=0",
                         "batch_size": "int>=1", "saddle_draws": "int>=0", "saddle_step": "num>0"},
    "surfaces": {"dims": "int>=1", "range": "num>0", "resolution": "int>=1", "eval_samples": "int>=1",
                 "seed": "int>=0", "chunk": "int>=1", "batch_size": "int>=1", "hessian_tol": "num>0",
                 "hessian_max_iter": "int>=1"},
}


def _metric_rule_problems(family: str, settings: Any) -> list[str]:
    """Problems of ``metrics.<family>.*`` under ``METRIC_RULES`` (messages name the full key)."""
    out = []
    for key, kind in METRIC_RULES.get(family, {}).items():
        if key not in settings:
            continue
        v = settings[key]
        if v is None:
            continue  # an optional setting left to its family's default (the family's own check decides)
        name = f"metrics.{family}.{key}={v!r}"
        if kind.startswith("int>="):
            low = int(kind[5:])
            if not (_is_int(v) and v >= low):
                out.append(f"{name}: expected an integer >= {low}")
        elif kind == "num>0":
            if not (_is_number(v) and math.isfinite(v) and v > 0):
                out.append(f"{name}: expected a finite number > 0")
        elif kind == "num>=0":
            if not (_is_number(v) and math.isfinite(v) and v >= 0):
                out.append(f"{name}: expected a finite number >= 0")
        elif kind == "frac":
            if not (_is_number(v) and 0 <= v < 1):
                out.append(f"{name}: expected a number in [0, 1)")
        elif kind == "list>0":
            items = list(v) if OmegaConf.is_list(v) or isinstance(v, (list, tuple)) else None
            if not items or not all(_is_number(x) and math.isfinite(x) and x > 0 for x in items):
                out.append(f"metrics.{family}.{key}={items if items is not None else v!r}: "
                           "expected a non-empty list of numbers > 0")
    return out


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


def training_bytes(cfg: Any, n_params: int) -> int:
    """Rough memory (bytes) to train the cell's seeds: float32 weights, gradients, momentum and a spare
    copy per model (16 bytes per parameter), for every seed trained at once (all, if vectorized)."""
    together = len(list(cfg.train.seeds)) if str(cfg.train.vectorize) == "on" else 1
    return 16 * n_params * together


def launch_problems(cfg: Any, local: bool, memory_bytes: int | None = None) -> list[str]:
    """Problems that depend on the model and the machine, checked at planning (``validate`` passed):
    ``train.vectorize=on`` with a model that cannot be stacked; a model that does not fit in memory
    (``memory_bytes``: what one job may use, e.g. this machine's RAM for local launches); ``device=cuda``
    (or ``cuda:N``) where the jobs run on this machine and it has no such GPU."""
    p: list[str] = []
    if _input_spec(cfg.data) is None:
        return p
    try:
        n_params, _, reason = model_facts(cfg)
    except Exception as exc:  # noqa: BLE001 - e.g. a width that makes the architecture impossible
        return [f"model.name={cfg.model.name}, model.width={cfg.model.width}: cannot build the model ({exc})"]
    if str(cfg.train.vectorize) == "on" and reason is not None:
        p.append(f"train.vectorize=on: cannot train {cfg.model.name} seeds together: {reason}; use "
                 "train.vectorize=auto or off")
    if memory_bytes is not None:
        need = training_bytes(cfg, n_params)
        if need > memory_bytes:
            p.append(f"model.width={cfg.model.width}: the {cfg.model.name} has {n_params:,} parameters, about "
                     f"{need / 2**30:.1f} GiB to train, more than the {memory_bytes / 2**30:.1f} GiB available")
    dev = str(cfg.device)
    if local and dev.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.append(f"device={dev!r}: CUDA is not available on this machine; use device=cpu or auto")
        elif ":" in dev and dev.split(":", 1)[1].isdigit() and int(dev.split(":", 1)[1]) >= torch.cuda.device_count():
            p.append(f"device={dev!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return p


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


def semantic_config(cfg: DictConfig | Any) -> dict[str, Any]:
    """The part of a cell's config that defines what is trained: ``data``, ``model`` and ``train`` without
    the seed list and the checkpoint interval. ``train.vectorize`` stays in: seeds trained together agree with
    serial training to float rounding per step, but chaotic small-batch SGD amplifies that over many steps, so
    the two modes are different cells (same config, same numbers)."""
    out = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "train")}
    for k in ("seeds", "checkpoint_every"):
        out["train"].pop(k, None)  # type: ignore[union-attr]
    return out
