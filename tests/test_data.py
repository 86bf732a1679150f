"""Datasets: exact label noise, nested deterministic subsets, offline sources, the CIFAR-10 file format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from helpers import write_tiny_cifar10
from omegaconf import OmegaConf

from landscape.config import data_config, full_train_size
from landscape.data import apply_label_noise, load_data, resolve_count, subsample_indices


def data_cfg(**kw):
    return OmegaConf.structured(data_config(**kw))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("n", [101, 1437])
def test_label_noise_changes_exactly_the_rounded_count(fraction, n):
    y = np.random.default_rng(1).integers(0, 10, n)
    noisy = apply_label_noise(y, fraction, 10, seed=7)
    assert (noisy != y).sum() == round(fraction * n)
    assert noisy.min() >= 0 and noisy.max() < 10
    assert np.array_equal(noisy, apply_label_noise(y, fraction, 10, seed=7))  # same seed, same labels
    if fraction > 0:
        assert not np.array_equal(noisy, apply_label_noise(y, fraction, 10, seed=8))


def test_label_noise_refuses_fraction_outside_range():
    with pytest.raises(ValueError, match="data.label_noise=1.0"):
        apply_label_noise(np.zeros(10, dtype=int), 1.0, 10, seed=0)


def test_subsets_are_deterministic_and_nested():
    small = subsample_indices(1437, resolve_count(0.1, 1437), seed=3)
    large = subsample_indices(1437, resolve_count(0.2, 1437), seed=3)
    assert len(small) == 144 and len(large) == 287
    assert set(small) <= set(large)
    assert np.array_equal(small, subsample_indices(1437, 144, seed=3))
    assert resolve_count(500, 1437) == 500 and resolve_count(1.0, 1437) == 1437 and resolve_count(200.0, 1437) == 200


def test_loaded_digits_noise_and_nesting_on_real_data():
    d10 = load_data(data_cfg(subsample=0.1, label_noise=0.3))
    d20 = load_data(data_cfg(subsample=0.2, label_noise=0.0))
    assert d10.n_train == 144 and d10.n_test == 360 and d10.input_shape == (1, 8, 8)
    # noise is drawn on the full training split: exactly round(0.3 * 1437) there, the subset's share here
    noisy_full = load_data(data_cfg(label_noise=0.3)).noisy_mask
    assert int(noisy_full.sum()) == round(0.3 * 1437)
    assert torch.equal(d10.noisy_mask, noisy_full[torch.from_numpy(subsample_indices(1437, 144, 0))])
    assert 0.2 < float(d10.noisy_mask.float().mean()) < 0.4
    # the clean 10 % training images are among the 20 % ones (compare raw labels+pixels via the clean labels)
    full = load_data(data_cfg())
    idx10 = subsample_indices(1437, 144, 0)
    idx20 = subsample_indices(1437, 287, 0)
    assert set(idx10) <= set(idx20)
    assert torch.equal(d10.y_train_clean, full.y_train[torch.from_numpy(idx10)])
    assert torch.equal(d20.y_train, full.y_train[torch.from_numpy(idx20)])
    # test labels are never touched by label noise
    assert torch.equal(d10.y_test, full.y_test)


def _shared(small: np.ndarray, large: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in the small and in the large subset of the samples they share (index arrays are sorted)."""
    common = np.intersect1d(small, large)
    return torch.from_numpy(np.searchsorted(small, common)), torch.from_numpy(np.searchsorted(large, common))


def test_noisy_labels_are_nested_across_data_amounts():
    """A sample noisy in the 10 % subset is noisy, with the same wrong label, in the 20 % subset."""
    d10 = load_data(data_cfg(subsample=0.1, label_noise=0.3))
    d20 = load_data(data_cfg(subsample=0.2, label_noise=0.3))
    i10, i20 = _shared(subsample_indices(1437, 144, 0), subsample_indices(1437, 287, 0))
    assert len(i10) == 144  # nested subsets: all of the small one is shared
    assert torch.equal(d10.y_train_clean, d20.y_train_clean[i20])
    assert torch.equal(d10.noisy_mask, d20.noisy_mask[i20]) and int(d10.noisy_mask.sum()) > 20
    assert torch.equal(d10.y_train, d20.y_train[i20])  # the same wrong labels
    # and across noise levels: the noisy samples at 10 % are noisy, with the same labels, at 30 %
    low = load_data(data_cfg(subsample=0.2, label_noise=0.1))
    assert bool((d20.noisy_mask[low.noisy_mask]).all())
    assert torch.equal(low.y_train[low.noisy_mask], d20.y_train[low.noisy_mask])
    # the noisy seed changes the noise, not the subset
    other = load_data(data_cfg(subsample=0.1, label_noise=0.3, noise_seed=5))
    assert torch.equal(other.y_train_clean, d10.y_train_clean) and not torch.equal(other.y_train, d10.y_train)


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_a_sample_has_the_same_normalised_inputs_in_every_subset(name):
    extra = {"num_samples": 500} if name == "mnist1d" else {}
    n_full = full_train_size(data_cfg(name=name, **extra))
    a = load_data(data_cfg(name=name, subsample=0.1, subsample_seed=1, **extra))
    b = load_data(data_cfg(name=name, subsample=0.3, subsample_seed=2, **extra))  # another, overlapping subset
    full = load_data(data_cfg(name=name, **extra))
    ia, ib = _shared(subsample_indices(n_full, a.n_train, 1), subsample_indices(n_full, b.n_train, 2))
    assert len(ia) > 5
    assert torch.equal(a.x_train[ia], b.x_train[ib])  # bit for bit
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.x_test, full.x_test)
    # the statistics are the full training split's: it is exactly standardised, a subset only roughly
    mean = full.x_train.double().mean(dim=(0, 2) if full.x_train.ndim == 3 else (0, 2, 3))
    assert float(mean.abs().max()) < 1e-5
    assert float(a.x_train.double().mean(dim=0).abs().max()) > 1e-3


def test_gaussian_test_set_does_not_depend_on_n_train():
    a = load_data(data_cfg(name="gaussian", n_train=300, n_test=100))
    b = load_data(data_cfg(name="gaussian", n_train=600, n_test=100))
    raw = __import__("landscape.data", fromlist=["_gaussian"])._gaussian
    xa, _, ta, ya, _ = raw(data_cfg(name="gaussian", n_train=300, n_test=100))
    xb, _, tb, yb, _ = raw(data_cfg(name="gaussian", n_train=600, n_test=100))
    assert np.array_equal(ta, tb) and np.array_equal(ya, yb)  # the raw test samples are identical
    assert torch.equal(a.y_test, b.y_test)
    assert not np.array_equal(xa, xb[:300])  # (the training sets differ: another n_train is another dataset)


def test_same_config_same_data_and_sizes_known_without_loading():
    a = load_data(data_cfg(name="gaussian", n_train=300, n_test=100, label_noise=0.2))
    b = load_data(data_cfg(name="gaussian", n_train=300, n_test=100, label_noise=0.2))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert full_train_size(data_cfg(name="gaussian", n_train=300)) == 300
    m = load_data(data_cfg(name="mnist1d", num_samples=500))
    assert m.n_train == full_train_size(data_cfg(name="mnist1d", num_samples=500)) == 400
    assert m.input_shape == (1, 40) and m.n_classes == 10


def test_cifar10_loader_reads_the_real_format(tmp_path):
    root = write_tiny_cifar10(tmp_path / "cifar-10-batches-py")
    d = load_data(data_cfg(name="cifar10", root=str(root), subsample=20, label_noise=0.25))
    assert d.n_train == 20 and d.n_test == 5 and d.input_shape == (3, 32, 32) and d.n_classes == 10
    full_noisy = load_data(data_cfg(name="cifar10", root=str(root), label_noise=0.25)).noisy_mask
    assert int(full_noisy.sum()) == round(0.25 * 30)
    assert torch.equal(d.noisy_mask, full_noisy[torch.from_numpy(subsample_indices(30, 20, 0))])
    with open(root / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")
    # pixels are read channel-first: the red plane of image 0 is the first 1024 bytes
    full = load_data(data_cfg(name="cifar10", root=str(root)))
    assert full.n_train == 30
    red = np.asarray(first[b"data"][0][:1024], dtype=np.float32).reshape(32, 32)
    x0 = full.x_train[0][0].numpy()  # full set (subsample 1.0) keeps file order
    assert np.corrcoef(red.ravel(), x0.ravel())[0, 1] > 0.999
    assert full.y_train[0].item() == first[b"labels"][0]


def test_cifar10_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_data(data_cfg(name="cifar10", root=str(tmp_path)))


def test_digits_read_without_sklearn_import_match_load_digits():
    from sklearn.datasets import load_digits

    from landscape.data import _digits_file

    table = np.loadtxt(_digits_file(), delimiter=",")
    bunch = load_digits()
    assert np.array_equal(table[:, :-1], bunch.data) and np.array_equal(table[:, -1].astype(int), bunch.target)
