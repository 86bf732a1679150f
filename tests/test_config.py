"""Config groups: every option and every named sweep composes and validates; bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from landscape.cell import cell_id
from landscape.config import ConfigError, check, validate

REPO = Path(__file__).resolve().parents[1]
GROUPS = {g: sorted(p.stem for p in (REPO / "conf" / g).glob("*.yaml")) for g in ("data", "model", "train")}
SWEEPS = sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes_and_validates(compose, group, option, tmp_path):
    extra = []
    if option == "cifar10":
        from helpers import write_tiny_cifar10

        extra = [f"data.root={write_tiny_cifar10(tmp_path / 'c10', per_batch=40)}", "train.batch_size=32"]
    if option == "resnet18":
        extra = ["model.width=2"]
    cfg = compose([f"{group}={option}", *extra])
    assert validate(cfg) == []


def test_the_composed_metric_defaults_are_the_family_dataclasses(compose):
    """A family's defaults live in its ``Config`` dataclass and nowhere else: the composed config of a cell (no
    overrides) holds exactly those, for every registered family, ``enabled`` included."""
    import dataclasses

    from omegaconf import OmegaConf

    from landscape.metrics import families

    composed = OmegaConf.to_container(compose([]).metrics)
    assert composed.pop("pairs") == "all"
    assert composed == {f.name: dataclasses.asdict(f.config()) for f in families()}


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_composes_and_its_grid_is_declared(compose, sweep, tmp_path):
    text = (REPO / "sweeps" / f"{sweep}.yaml").read_text()
    assert text.startswith("# @package _global_")
    header = [line for line in text.splitlines()[1:6] if line.startswith("#")]
    assert header, f"{sweep}.yaml needs a header comment saying what it studies and how long it takes"
    extra = []
    if "cifar10" in text:
        from helpers import write_tiny_cifar10

        extra = [f"data.root={write_tiny_cifar10(tmp_path / 'c10', per_batch=400)}"]
    cfg = compose([f"+sweep={sweep}", *extra])
    params = yaml.safe_load(text)["hydra"]["sweeper"]["params"]
    assert params, "a sweep file declares its grid"
    first = [f"{k}={str(v).split(',')[0]}" for k, v in params.items()]
    cell = compose([f"+sweep={sweep}", *extra, *first])
    problems = validate(cell)
    # batch sizes of the paper's grids exceed the tiny CIFAR-10 stand-in; everything else must be valid
    assert [p for p in problems if not p.startswith("train.batch_size")] == []
    assert cfg.sweep_name == sweep


BAD = [
    ("model.width=-3", "model.width=-3"),
    ("model.width=0", "model.width=0"),
    ("data.label_noise=1.0", "data.label_noise=1.0"),
    ("data.label_noise=-0.1", "data.label_noise=-0.1"),
    ("model.name=transformer", "model.name='transformer'"),
    ("data.name=imagenet", "data.name='imagenet'"),
    ("train.batch_size=5000", "train.batch_size=5000"),
    ("train.lr=0", "train.lr=0"),
    ("train.seeds=[]", "train.seeds=[]"),
    ("data.subsample=1.5", "data.subsample=1.5"),
    ("train.loss=hinge", "train.loss='hinge'"),
]


@pytest.mark.parametrize("override,named", BAD)
def test_bad_values_are_named_with_what_is_allowed(compose, override, named):
    cfg = compose([override])
    with pytest.raises(ConfigError) as err:
        check(cfg)
    msg = str(err.value)
    assert named in msg and "expected" in msg


def test_cell_id_ignores_seeds_and_metrics_but_not_knobs(compose):
    base = cell_id(compose([]))
    assert cell_id(compose(["train.seeds=[0,1,2]"])) == base
    assert cell_id(compose(["metrics.l2.enabled=false"])) == base
    assert cell_id(compose(["device=cpu"])) == base
    assert cell_id(compose(["model.width=33"])) != base
    assert cell_id(compose(["data.label_noise=0.1"])) != base
    assert len(base) == 12 and base == cell_id(compose([]))


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["metrics.hessian.enabled=true", "metrics.hessian.mode=fast"], "metrics.hessian.mode='fast'"),
        (["metrics.cka.enabled=true", "metrics.cka.kernel=cosine"], "metrics.cka.kernel='cosine'"),
        (["metrics.connectivity.enabled=true", "metrics.connectivity.init=zeros"], "metrics.connectivity.init='zeros'"),
        (["metrics.surfaces.enabled=true", "metrics.surfaces.dims=3"], "metrics.surfaces.dims=3"),
        (
            ["metrics.projection_trace.enabled=true", "metrics.projection_trace.dtype=half"],
            "metrics.projection_trace.dtype='half'",
        ),
        (
            ["metrics.jump_retrain.enabled=true", "metrics.jump_retrain.embedding=tsne"],
            "metrics.jump_retrain.embedding='tsne'",
        ),
    ],
)
def test_metric_settings_are_checked_before_any_job(compose, overrides, named):
    with pytest.raises(ConfigError) as err:
        check(compose(overrides))
    assert named in str(err.value)
    assert (
        validate(compose([o.replace("=true", "=false") if o.endswith(".enabled=true") else o for o in overrides])) == []
    )


def test_pair_selections():
    from landscape.metrics import select_pairs

    assert select_pairs([2, 0, 1]) == [(0, 1), (0, 2), (1, 2)]
    assert select_pairs([0, 1, 2, 3], "chain") == [(0, 1), (1, 2), (2, 3)]
    assert select_pairs([0, 1, 2, 3], "star") == [(0, 1), (0, 2), (0, 3)]
    with pytest.raises(ValueError, match="metrics.pairs='ring'"):
        select_pairs([0, 1], "ring")
