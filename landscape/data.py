"""Datasets of a grid cell: generated or embedded, subsampled and label-noised deterministically.

Every dataset yields a train and a test split as in-memory tensors. Two knobs act on the training split:

* quantity, ``data.subsample``: a fraction in (0, 1] or a count >= 1 of the training split, taken as a prefix
  of one fixed permutation (``data.subsample_seed``), so a 10 % subset is inside the 20 % subset;
* quality, ``data.label_noise``: that fraction of the *full* training split's labels, rounded to a count, is
  replaced by a different class, both the samples and the new classes drawn from ``data.noise_seed``, before
  subsampling. A knob changes one thing: a sample noisy in the 10 % subset is noisy, with the same wrong label,
  in the 20 % subset (a subset's noisy fraction is the knob's up to sampling: hypergeometric around it); and a
  sample noisy at 10 % noise is noisy, with the same wrong label, at 20 % noise.

Test labels are never touched. Inputs are standardised per channel with the statistics of the *full* training
split (computed before subsampling), so a sample has the same inputs in every subset. The gaussian dataset
draws its test set from its own random stream: it does not depend on ``n_train``.
No dataset is downloaded: digits ships with scikit-learn, mnist1d is generated from its package's templates,
gaussian is synthetic and CIFAR-10 is read from a local directory in the python-pickle batch format.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

DATASETS = ("digits", "mnist1d", "gaussian", "cifar10")
"""The datasets this module loads (``load_data``); each has its config class, keys and checks in
``landscape.config`` (``OPTIONS["data"]``: the size of its training split, its input shape, its problems)."""
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"


@dataclass(frozen=True)
class CellData:
    """The data of one cell, as tensors.

    ``x_*``: float32 ``[n, *input_shape]``; ``y_*``: int64 ``[n]`` class indices. ``y_train`` holds the labels
    the models are trained on (after label noise); ``y_train_clean`` the original ones.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    y_train_clean: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def noisy_mask(self) -> Tensor:
        """Boolean ``[n_train]``: True where the training label was changed by label noise."""
        return self.y_train != self.y_train_clean

    def to(self, device: torch.device | str) -> "CellData":
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            y_train_clean=self.y_train_clean.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )


# ----------------------------------------------------------------------------------------------- subsets
def resolve_count(subsample: float | int, n_full: int) -> int:
    """Number of training samples kept: ``subsample`` is a fraction in (0, 1] (float) or a count (int >= 1).

    A float 1.0 means the whole set; an integer-valued float > 1 is read as a count.
    """
    if isinstance(subsample, bool):
        raise ValueError(f"data.subsample={subsample!r}: expected a fraction in (0, 1] or a count >= 1")
    if isinstance(subsample, int) or (isinstance(subsample, float) and subsample > 1 and subsample.is_integer()):
        return int(subsample)
    return max(1, int(round(float(subsample) * n_full)))


def subsample_indices(n_full: int, count: int, seed: int) -> np.ndarray:
    """Indices of the first ``count`` elements of a fixed permutation of ``range(n_full)``.

    Nested by construction: the subset of a smaller count is a prefix of a larger one with the same seed.
    """
    if not 1 <= count <= n_full:
        raise ValueError(f"subsample count {count} outside [1, {n_full}]")
    perm = np.random.default_rng(seed).permutation(n_full)
    return np.sort(perm[:count])


NOISE_STREAM = 0x6E6F6973  # tags the label-noise random stream (ASCII "nois")


def apply_label_noise(y: np.ndarray, fraction: float, n_classes: int, seed: int) -> np.ndarray:
    """Return a copy of ``y`` where ``round(fraction * len(y))`` labels are replaced by a different class.

    The changed samples are a prefix of a seeded permutation and each sample's wrong class is drawn once for
    every sample (uniform over the other ``n_classes - 1`` classes), so the realised fraction is exactly the
    rounded count, and the noisy samples of a smaller fraction are noisy, with the same labels, at a larger one.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.label_noise={fraction!r}: expected a fraction in [0, 1)")
    y = np.asarray(y).copy()
    n_noisy = int(round(fraction * len(y)))
    if n_noisy == 0:
        return y
    # a stream of its own: the same seed value as data.subsample_seed must not draw the same permutation
    rng = np.random.default_rng([int(seed), NOISE_STREAM])
    idx = rng.permutation(len(y))[:n_noisy]
    shift = rng.integers(1, n_classes, size=len(y))  # one draw per sample, whatever the fraction
    y[idx] = (y[idx] + shift[idx]) % n_classes
    return y


# ------------------------------------------------------------------------------------------------ sources
def _split(x: np.ndarray, y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, ...]:
    perm = np.random.default_rng(seed).permutation(len(y))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


DIGITS_N_IMAGES = 1797
DIGITS_N_TEST = 360  # of 1797; 1437 training images


def _digits_file() -> Path:
    """scikit-learn's embedded digits table (64 pixel columns + label), found without importing sklearn
    (whose import costs seconds per job process)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("data.name='digits' needs scikit-learn (it ships the digits data)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"


def _digits(cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    table = np.loadtxt(_digits_file(), delimiter=",")  # [1797, 65], as sklearn.datasets.load_digits reads it
    x = (table[:, :-1].astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # [1797, 1, 8, 8]
    y = table[:, -1].astype(np.int64)
    return (*_split(x, y, DIGITS_N_TEST, cfg.split_seed), 10)


def _mnist1d(cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(cfg.num_samples)
    args.seed = int(cfg.generator_seed)
    data = make_dataset(args)  # generated from the package's embedded templates, no download
    x_train = data["x"].astype(np.float32)[:, None, :]
    x_test = data["x_test"].astype(np.float32)[:, None, :]
    return x_train, data["y"].astype(np.int64), x_test, data["y_test"].astype(np.int64), 10


def mnist1d_train_size(num_samples: int) -> int:
    """Training-set size of mnist1d's generator for ``num_samples`` (its fixed 80/20 split)."""
    return int(num_samples * 0.8)


def _gaussian(cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Mixture of ``n_classes`` isotropic unit Gaussians in ``dim`` dimensions.

    Class means are drawn on the sphere of radius ``separation`` (seeded by ``generator_seed``); labels
    are balanced up to one sample. Larger separation = easier problem.
    """
    seed = int(cfg.generator_seed)
    k, d = int(cfg.n_classes), int(cfg.dim)
    means = np.random.default_rng(seed).standard_normal((k, d))
    means *= float(cfg.separation) / np.linalg.norm(means, axis=1, keepdims=True)

    def draw(n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, stream])  # train and test: independent streams
        y = rng.permutation(np.arange(n) % k).astype(np.int64)
        x = means[y] + rng.standard_normal((n, d))
        return x.astype(np.float32), y

    x_train, y_train = draw(int(cfg.n_train), 1)
    x_test, y_test = draw(int(cfg.n_test), 2)
    return x_train, y_train, x_test, y_test, k


class UnsafeFileError(ValueError):
    """A data file that would run code (or is not in the expected format) when read; the message names it."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that builds plain containers, numbers, strings and numpy arrays only: any other global (a
    function, a class, ``os.system``, ...) is refused before it is called."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name} (only numpy arrays and plain containers are allowed in a CIFAR-10 batch)"
        )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [n, 3, 32, 32], labels int64 [n])`` of one CIFAR-10 python batch, unpickled by a
    restricted unpickler (``_CifarUnpickler``): a file that would run code raises ``UnsafeFileError`` naming
    it, and nothing of it is executed."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UnsafeFileError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if len(data) != len(labels):
        raise UnsafeFileError(f"{path}: not a CIFAR-10 python batch ({len(data)} images, {len(labels)} labels)")
    return data, labels


def cifar10_missing_files(root: str | Path) -> list[str]:
    """Names of the standard CIFAR-10 batch files absent from ``root``."""
    root = Path(root).expanduser()
    return [n for n in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE) if not (root / n).is_file()]


@functools.lru_cache(maxsize=8)
def write_synthetic_cifar10(root: str | Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A CIFAR-10 directory in the real python-pickle format (5 training batches, one test batch) holding
    ``n_train`` / ``n_test`` random uint8 images with random labels (seeded by ``seed``): for benchmarks and tests
    without the real files."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for name, n in [*((f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)), ("test_batch", n_test)]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return root


def cifar10_train_size(root: str) -> int:
    """Number of training images in the CIFAR-10 directory ``root`` (reads the batch files once)."""
    return sum(len(_read_cifar_batch(Path(root).expanduser() / n)[1]) for n in CIFAR10_TRAIN_FILES)


def _cifar10(cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    root = Path(str(cfg.root)).expanduser()
    missing = cifar10_missing_files(root)
    if missing:
        raise FileNotFoundError(
            f"data.root={str(cfg.root)!r}: CIFAR-10 python batches missing: {', '.join(missing)} "
            "(expected the extracted 'cifar-10-batches-py' directory)"
        )
    parts = [_read_cifar_batch(root / n) for n in CIFAR10_TRAIN_FILES]
    x_train = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_batch(root / CIFAR10_TEST_FILE)
    return x_train, y_train, x_test.astype(np.float32) / 255.0, y_test, 10


_SOURCES = {"digits": _digits, "mnist1d": _mnist1d, "gaussian": _gaussian, "cifar10": _cifar10}


def full_train_size(cfg: Any) -> int:
    """Size of the full training split of the dataset of the ``data`` config node ``cfg``, known without
    generating it: the ``train_size`` of the config class the node was composed from (``landscape.config``:
    each dataset's class; CIFAR-10: counted on disk). For a node without that class (rebuilt from plain
    values) use ``landscape.config.full_train_size``, which finds the class by ``data.name``."""
    from omegaconf import OmegaConf

    size = getattr(OmegaConf.get_type(cfg) if OmegaConf.is_config(cfg) else type(cfg), "train_size", None)
    if size is None:
        raise ValueError(f"data.name={cfg.get('name')!r}: not a node of a dataset's config class (landscape.config)")
    return int(size(cfg))


def standardisation(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1 of ``[n, C, ...]``; per-feature for ``[n, D]``) mean and standard deviation of
    ``x_train``, shaped to broadcast against it (a standard deviation below 1e-8 is replaced by 1)."""
    axes = (0,) + tuple(range(2, x_train.ndim))
    mean = x_train.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x_train.std(axis=axes, keepdims=True, dtype=np.float64)
    std[std < 1e-8] = 1.0
    return mean, std


def load_data(cfg: Any) -> CellData:
    """Build the cell's data from the ``data`` config node (name, subsample, label_noise, seeds, ...)."""
    name = cfg.name
    if name not in _SOURCES:
        raise ValueError(f"data.name={name!r}: expected one of {', '.join(DATASETS)}")
    x_train, y_train, x_test, y_test, n_classes = _SOURCES[name](cfg)
    count = resolve_count(cfg.subsample, len(y_train))
    if count > len(y_train):
        raise ValueError(f"data.subsample={cfg.subsample!r}: asks for {count} samples, the set has {len(y_train)}")
    # noise and normalisation statistics on the full training split, then the subset: one knob, one change
    y_noisy = apply_label_noise(y_train, float(cfg.label_noise), n_classes, int(cfg.noise_seed))
    mean, std = standardisation(x_train)
    keep = subsample_indices(len(y_train), count, int(cfg.subsample_seed))
    x_train, y_train, y_noisy = x_train[keep], y_train[keep], y_noisy[keep]
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    log.debug("data %s: %d train / %d test, %d noisy labels", name, count, len(y_test), int((y_noisy != y_train).sum()))
    return CellData(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
        y_train=torch.from_numpy(y_noisy),
        y_train_clean=torch.from_numpy(y_train),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)),
        y_test=torch.from_numpy(y_test.astype(np.int64)),
        n_classes=n_classes,
    )
