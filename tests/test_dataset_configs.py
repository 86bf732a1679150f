"""One config per dataset and per model kind (issue 21): a row records only the keys of its own options (null in
the others' columns), ``landscape --help`` lists each option with its own keys, an override of another option's
key is refused naming the options that have it, and the rows and cell ids of sweeps written before (schema
version 4, one flat ``data``/``model`` config: ``tests/data/schema_v4``) still read correctly."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import FAST, REPO
from omegaconf import OmegaConf

from landscape.cell import cell_id
from landscape.config import OPTIONS, chosen_options, override_problems, semantic_config
from landscape.results import load, schema, write_table

V4 = REPO / "tests" / "data" / "schema_v4"  # 4 rows written by the code of schema version 4 (see its README)

# The keys of each option, written out here (not read from the config classes): what a row may hold.
DATA_KEYS = {
    "digits": {"split_seed"},
    "mnist1d": {"num_samples", "generator_seed"},
    "gaussian": {"n_train", "n_test", "dim", "n_classes", "separation", "generator_seed"},
    "cifar10": {"root"},
}
MODEL_KEYS = {"mlp": {"width", "depth", "activation"}, "cnn": {"width", "depth", "activation", "batch_norm"}}
EVERY_DATASET = {"name", "subsample", "label_noise", "subsample_seed", "noise_seed"}
ALWAYS = {"data.n_train", "model.n_params"}  # derived columns: every row has them


def _held(row, group: str) -> set[str]:
    """The ``group.*`` columns of ``row`` (a pandas Series) that hold a value."""
    return {c for c, v in row.items() if c.startswith(f"{group}.") and not pd.isna(v)}


def test_a_digits_row_holds_no_key_of_another_dataset_or_model_kind(cli, tmp_path):
    """A real digits/MLP cell and a Gaussian/CNN cell through the CLI: each row holds its options' keys and null in
    every other dataset's and model kind's columns (the flat schema wrote ``data.n_classes = 4``, ``data.dim =
    16``, ``data.n_test = 1000``, ``data.num_samples = 5000`` into every digits row)."""
    cli(["-m", "hydra.sweep.dir=s", *FAST, "train.seeds=[0]", "data=digits,gaussian", "model=mlp,cnn", "model.width=4"])
    rows = load(tmp_path / "s")
    assert len(rows) == 4 and (rows["status"] == "done").all()
    assert (rows["schema_version"] == schema.SCHEMA_VERSION).all()
    for _, row in rows.iterrows():
        data, model = row["data.name"], row["model.name"]
        assert _held(row, "data") == {f"data.{k}" for k in EVERY_DATASET | DATA_KEYS[data]} | {"data.n_train"}
        assert _held(row, "model") == {f"model.{k}" for k in {"name"} | MODEL_KEYS[model]} | {"model.n_params"}
        config = json.loads(row["config"])  # the resolved config kept in the row: the same keys
        assert (
            set(config["data"]) == EVERY_DATASET | DATA_KEYS[data]
            and set(config["model"]) == {"name"} | (MODEL_KEYS[model])
        )
    digits = rows[rows["data.name"] == "digits"].iloc[0]
    assert digits["data.n_train"] == round(0.25 * 1437) and digits["data.split_seed"] == 0
    gaussian = rows[rows["data.name"] == "gaussian"].iloc[0]
    assert (gaussian["data.n_classes"], gaussian["data.dim"], gaussian["data.n_test"]) == (4, 16, 1000)
    assert gaussian["data.n_train"] == 250  # derived: a quarter of the mixture's 1000 training samples
    # the schema says which options a column applies to
    field = schema.schema_for("models").field("data.n_classes")
    assert field.metadata == {b"landscape.option_key": b"data.name", b"landscape.options": b"gaussian"}
    assert schema.schema_for("models").field("data.label_noise").metadata is None


def _help_rows(text: str, heading: str) -> dict[str, dict[str, str]]:
    """``{option: {key: value}}`` of the section of ``landscape --help`` under the line starting ``heading``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    out = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  ") or not line.strip():
            break
        name, _, rest = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0], None, line.strip()
        label = "every" if rest.startswith("every ") else name
        out[label] = dict(tok.split("=", 1) for tok in re.findall(r"\S+=\S+", rest))
    return out


def test_landscape_help_lists_each_option_with_its_own_keys(cli, compose):
    """Each dataset and model kind on a line of its own with its keys and defaults, compared with the config Hydra
    composes for that option (yaml file + schema): no key of another option, none missing."""
    text = cli(["--help"]).stdout
    for group, heading in (("data", "Datasets (data=NAME)"), ("model", "Models (model=NAME)")):
        rows = _help_rows(text, heading)
        shared = rows.pop("every", {})
        assert set(rows) == set(OPTIONS[group]), rows
        for option, keys in rows.items():
            composed = OmegaConf.to_container(compose([f"{group}={option}"])[group])
            assert composed.pop("name") == option
            want = {
                k: "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in composed.items()
            }
            assert {**shared, **keys} == want, (group, option)
            assert not set(shared) & set(keys)
    digits_line = next(line for line in text.splitlines() if line.strip().startswith("digits "))
    assert "split_seed=0" in digits_line and not re.search(r"n_classes|dim=|separation|num_samples|n_test", digits_line)


def test_a_key_of_another_option_is_refused_naming_the_options_that_have_it(cli, tmp_path):
    proc = cli(["data.n_classes=3", "model=resnet18", "model.depth=3"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "data.n_classes: not a key of data=digits" in proc.stderr and "is a key of data=gaussian" in proc.stderr
    assert "model.depth: not a key of model=resnet18" in proc.stderr and "model=mlp, model=cnn" in proc.stderr
    assert not (tmp_path / "outputs").exists()
    # the choice a command line makes: its own data=..., else its sweep's, else the primary config's
    conf = [REPO / "conf"]
    assert chosen_options([], conf) == {"data": ["digits"], "model": ["mlp"]}
    assert chosen_options(["+sweep=taxonomy_lr"], conf)["data"] == ["cifar10"]
    assert chosen_options(["-m", "data=gaussian,mnist1d", "model=cnn"], conf) == {
        "data": ["gaussian", "mnist1d"],
        "model": ["cnn"],
    }
    both = {"data": ["gaussian", "mnist1d"]}
    assert override_problems(["data.generator_seed=1", "data.n_classes=3"], options=both) == [
        "data.n_classes: not a key of data=mnist1d; its keys: name, subsample, label_noise, subsample_seed, "
        "noise_seed, num_samples, generator_seed. data.n_classes is a key of data=gaussian"
    ]
    assert override_problems(["data.name=gaussian"], options={"data": ["digits"]})[0].startswith(
        "data.name='gaussian': expected digits"
    )
    assert override_problems(["data.n_classes=3"], options={"data": ["gaussian"]}) == []


def _v4_copy(tmp_path: Path) -> Path:
    """The schema-4 rows in a sweep directory of their own (reading writes a snapshot beside them)."""
    shutil.copytree(V4, tmp_path / "v4")
    return tmp_path / "v4"


def test_rows_of_schema_version_4_read_with_the_keys_their_options_lack_as_nulls(tmp_path):
    """The version-4 rows (two digits, two Gaussian cells; MLP and CNN) held every dataset's and model kind's keys
    at the flat schema's defaults. Read now, those their options lack are null; every other value is the file's;
    a row of the current version beside them is read as written."""
    assert schema.SCHEMA_VERSION >= schema.OPTION_KEYS_SINCE > 4
    sweep = _v4_copy(tmp_path)
    raw = pq.read_table(sweep / "results" / "models" / "v4.parquet").to_pandas()
    assert (raw["schema_version"] == 4).all() and (raw["data.n_classes"] == 4).all()  # what the old code wrote
    assert (raw["model.batch_norm"] == False).all()  # noqa: E712 - every MLP row too
    write_table(
        sweep / "results" / "models" / "v5.parquet",
        [
            {
                "schema_version": schema.SCHEMA_VERSION,
                "cell_id": "new",
                "seed": 0,
                "data.name": "gaussian",
                "data.n_classes": 3,
                "model.name": "mlp",
                "model.depth": 1,
            }
        ],
        schema.schema_for("models"),
    )
    for attempt in ("files", "snapshot"):  # read from the files, then from the snapshot of the first read
        rows = load(sweep).set_index("cell_id")
        new = rows.loc["new"]
        assert new["data.n_classes"] == 3 and new["model.depth"] == 1 and pd.isna(new["data.split_seed"])
        old = rows.drop(index="new")
        assert len(old) == 4, attempt
        for cid, row in old.iterrows():
            data, model = row["data.name"], row["model.name"]
            want = {f"data.{k}" for k in EVERY_DATASET | DATA_KEYS[data]} | {f"model.{k}" for k in MODEL_KEYS[model]}
            held = _held(row, "data") | _held(row, "model")
            assert held == want | ALWAYS | {"model.name"}, (attempt, cid, held ^ (want | ALWAYS | {"model.name"}))
            before = raw.set_index("cell_id").loc[cid]
            for column in held | {"test_acc", "train_loss", "seed"}:
                assert row[column] == before[column], (attempt, cid, column)
        assert set(old.loc[old["data.name"] == "gaussian", "data.n_classes"]) == {4}
        assert set(old.loc[old["model.name"] == "cnn", "model.batch_norm"]) == {False}


def test_cells_of_schema_version_4_keep_their_ids(compose):
    """A cell composed now has the id the version-4 code gave it (its folder, so an older sweep resumes): the data
    and model parts that the id hashes are those of the old flat config (kept in the rows' ``config``). The train
    part is the old row's, so that a training key added later does not hide what this checks."""
    rows = pq.read_table(V4 / "results" / "models" / "v4.parquet").to_pandas()
    for _, row in rows.iterrows():
        cfg = compose(
            [f"data={row['data.name']}", f"model={row['model.name']}", *FAST, "model.width=4", "train.epochs=1"]
        )
        old = json.loads(row["config"])
        assert len(cfg.data) < len(old["data"])  # the node holds its option's keys only ...
        ours = semantic_config(cfg)
        assert ours["data"] == old["data"] and ours["model"] == old["model"]  # ... and hashes as before
        mixed = OmegaConf.create({"data": cfg.data, "model": cfg.model, "train": old["train"]})
        assert cell_id(mixed) == row["cell_id"]
        # training keys added later (augmentation, precision, compilation) at their defaults keep the id ...
        later = {**old["train"], "augment": False, "precision": "fp32", "compile": False}
        assert cell_id(OmegaConf.create({"data": cfg.data, "model": cfg.model, "train": later})) == row["cell_id"]
        # ... and any other value of theirs is another cell
        for key, value in (("augment", True), ("precision", "bf16"), ("compile", True)):
            other = OmegaConf.create({"data": cfg.data, "model": cfg.model, "train": {**later, key: value}})
            assert cell_id(other) != row["cell_id"], key


def test_each_option_has_its_file_and_its_loader():
    """Every registered dataset and model kind can be chosen (``conf/<group>/<name>.yaml``) and built."""
    from landscape.data import DATASETS
    from landscape.models import MODELS

    for group in OPTIONS:
        assert {p.stem for p in (REPO / "conf" / group).glob("*.yaml")} == set(OPTIONS[group])
    assert set(DATASETS) == set(OPTIONS["data"]) and set(MODELS) == set(OPTIONS["model"])


@pytest.mark.parametrize(
    "overrides,problem",
    [
        (["data.name=gaussian"], "data.name='gaussian': the data config holds the keys of another option"),
        (["+data.dim=3"], "data.dim: not a key of data=digits (added with '+')"),
        (["data=gaussian", "data.n_classes=1"], "data.n_classes=1: expected an integer >= 2"),
        (["data=mnist1d", "data.num_samples=5"], "data.num_samples=5: expected an integer >= 10"),
        (["model=cnn", "model.activation=swish"], "model.activation='swish': expected one of relu"),
    ],
)
def test_each_option_checks_its_own_keys(compose, overrides, problem):
    """A composed cell is checked against its options' classes: their keys' rules, a name written over another
    option's keys, a key added to an option that lacks it."""
    from landscape.config import validate

    assert any(p.startswith(problem) for p in validate(compose(overrides))), validate(compose(overrides))


@pytest.mark.parametrize(
    "overrides", [["data=digits"], ["data=mnist1d", "data.num_samples=200"], ["data=gaussian", "data.n_train=50"]]
)
def test_the_training_size_a_dataset_states_is_what_it_loads(compose, overrides):
    """A dataset's ``train_size`` (what validation and planning use, from the config alone) against the data it
    loads; ``landscape.data.full_train_size`` (from the node's class) and ``landscape.config.full_train_size``
    (from ``data.name``, for a node rebuilt from plain values) agree."""
    from landscape import config, data

    node = compose(overrides).data
    plain = OmegaConf.create(OmegaConf.to_container(node))
    n = data.load_data(node).n_train
    assert data.full_train_size(node) == config.full_train_size(plain) == n


@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet18"])
def test_every_model_option_is_sized_for_planning(compose, model, tmp_path):
    """Planning sizes each model from its own keys (a ResNet18 has no ``depth``): the parameter count the
    planner states is that of the model the job builds."""
    from landscape.config import _input_spec, model_size
    from landscape.models import build_model

    overrides = [f"model={model}", "model.width=4"]
    if model == "resnet18":
        overrides += ["data=cifar10", f"data.root={tmp_path}"]
    cfg = compose(overrides)
    n_params, _ = model_size(cfg)
    shape, n_classes = _input_spec(cfg.data)
    assert (shape, n_classes) == {"digits": ((1, 8, 8), 10), "cifar10": ((3, 32, 32), 10)}[cfg.data.name]
    built = build_model(cfg.model, input_shape=shape, n_classes=n_classes)
    assert n_params == sum(p.numel() for p in built.parameters())
