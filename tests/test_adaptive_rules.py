"""The adaptive sweeper's pure functions (landscape/adaptive.py) against hand-computed expectations: the grid of a
multirun, neighbours, the initial design, the budget, inference of unmeasured labels, the reasons a point is
uncertain and the order a wave takes them, the map completed for ``landscape-phase``, and the state file."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from landscape import adaptive as ad
from landscape import phase as ph

A, B = ad.Measured("II"), ad.Measured("IV-B")


def test_grid_from_jobs_sorts_numeric_axes_and_keeps_the_fixed_overrides():
    widths, batches = ["16", "4", "8"], ["64", "16"]
    jobs = [[f"model.width={w}", f"train.batch_size={b}", "data.subsample=0.25"] for w in widths for b in batches]
    grid, index = ad.grid_from_jobs(jobs)
    assert [a.key for a in grid.axes] == ["model.width", "train.batch_size"]
    assert grid.axes[0].values == ("4", "8", "16") and grid.axes[1].values == ("16", "64")
    assert grid.shape == (3, 2) and grid.size == 6 and grid.fixed == ("data.subsample=0.25",)
    assert index[(0, 0)] == jobs.index(["model.width=4", "train.batch_size=16", "data.subsample=0.25"])
    assert index[(2, 1)] == 0  # width 16, batch 64: the first job
    assert grid.overrides((1, 1)) == ["model.width=8", "train.batch_size=64"]
    assert [a.column for a in ad.Grid((ad.Axis("data", ("digits", "mnist1d")),)).axes] == ["data.name"]


def test_grid_from_jobs_refuses_what_is_not_a_full_grid():
    with pytest.raises(ad.AdaptiveError, match="no axis"):
        ad.grid_from_jobs([["model.width=8"]])
    with pytest.raises(ad.AdaptiveError, match="not the full grid of 4 points"):
        ad.grid_from_jobs([["a.x=1", "a.y=1"], ["a.x=2", "a.y=2"]])


def test_neighbours_are_one_step_along_one_axis():
    assert ad.neighbours((0, 0), (3, 4)) == [(1, 0), (0, 1)]
    assert ad.neighbours((1, 1), (3, 4)) == [(0, 1), (2, 1), (1, 0), (1, 2)]
    assert ad.neighbours((2, 3), (3, 4)) == [(1, 3), (2, 2)]
    assert ad.distance((0, 0), (3, 4)) == 5.0


def test_initial_design_every_stride_th_value_and_the_corners():
    assert ad.lattice(8, 4) == [0, 4, 7] and ad.lattice(5, 2) == [0, 2, 4] and ad.lattice(6, 2) == [0, 2, 4, 5]
    assert ad.initial_design((5, 3), 2) == [(0, 0), (0, 2), (2, 0), (2, 2), (4, 0), (4, 2)]
    assert set(ad.initial_design((8, 8), 100)) == {(0, 0), (0, 7), (7, 0), (7, 7)}  # the corners alone
    # auto: values spread evenly over each axis, both ends included, at most half the budget
    assert ad.spaced(8, 3) == [0, 4, 7] and ad.spaced(6, 3) == [0, 3, 5] and ad.spaced(7, 4) == [0, 2, 4, 6]
    assert ad.spaced(5, 1) == [0] and ad.spaced(3, 9) == [0, 1, 2]
    # 8 x 6 with 7 cells: 3 x 2 (gaps 3.5 and 5 steps) beats 2 x 3 (7 and 2.5: less even)
    assert ad.spaced_counts((8, 6), 7) == (3, 2)
    assert ad.auto_design((8, 6), 14) == [(0, 0), (0, 5), (4, 0), (4, 5), (7, 0), (7, 5)]
    assert ad.auto_design((5, 5), 12) == [(0, 0), (0, 4), (2, 0), (2, 4), (4, 0), (4, 4)]  # a tie: first axis finer
    assert ad.auto_design((8, 8), 19) == list(itertools.product([0, 4, 7], [0, 4, 7]))  # 9 <= 19 // 2
    assert set(ad.auto_design((8, 8), 6)) == {(0, 0), (0, 7), (7, 0), (7, 7)}  # the corners: at least those
    assert ad.design((5, 3), 6, 2) == ad.initial_design((5, 3), 2) and ad.design((8, 8), 19) == ad.auto_design(
        (8, 8), 19
    )
    with pytest.raises(ad.AdaptiveError, match="fewer than the 4 corners"):
        ad.auto_design((8, 8), 3)


@pytest.mark.parametrize(
    "value, expected",
    [(0.3, 19), ("40%", 25), (30, 30), ("30", 30), (1.0, 64), (1, 1), (0.001, 1)],
)
def test_max_cells_is_a_count_or_a_fraction(value, expected):
    assert ad.resolve_max_cells(value, 64) == expected


@pytest.mark.parametrize("value", [0, -1, 65, 1.5, "abc", True, float("nan"), "0%"])
def test_bad_max_cells_names_key_value_and_what_is_allowed(value):
    with pytest.raises(ad.AdaptiveError) as e:
        ad.resolve_max_cells(value, 64)
    assert f"hydra.sweeper.max_cells={value!r}" in str(e.value) and "allowed: a count of cells in [1, 64]" in str(
        e.value
    )


def test_bad_rule_stride_and_wave_size_are_refused():
    with pytest.raises(ad.AdaptiveError, match=r"hydra.sweeper.refine='nearest': unknown .* boundary, labels, random"):
        ad.check_rule("nearest")
    with pytest.raises(ad.AdaptiveError, match=r"initial_stride=1: its initial design has 64 cells"):
        ad.resolve_stride(1, (8, 8), 32)
    with pytest.raises(ad.AdaptiveError, match="initial_stride='two'"):
        ad.resolve_stride("two", (8, 8), 32)
    assert ad.resolve_stride("auto", (8, 8), 32) is None and ad.resolve_stride(2, (8, 8), 32) == 2
    with pytest.raises(ad.AdaptiveError, match="fewer than the 4 corners"):
        ad.resolve_stride("auto", (8, 8), 3)
    assert ad.check_wave_size("auto") is None and ad.check_wave_size(3) == 3
    with pytest.raises(ad.AdaptiveError, match="wave_size=0"):
        ad.check_wave_size(0)


RULE = ph.PhaseRule.paper()  # training loss 0.05 nats, mc_underfit 0, mc_barrier -0.5 pp, CKA 0.7


def cell(loss: float, mc: float = 1.0, cka: float = 0.9, confidence: float = float("nan")) -> ad.Measured:
    """A measured cell labelled by the paper's rule from its values."""
    values = {"train_loss": loss, "connectivity.mc": mc, "cka": cka}
    return ad.Measured(RULE.label(loss, mc, cka), confidence, None, values)


def test_inference_from_labels_majority_then_confidence_never_unknown():
    # 1-D: measured 0 (II) and 4 (IV-B): 1 -> II, 3 -> IV-B; 2: an even split, no confidence: alphabetical (II)
    got = ad.infer((5,), {(0,): A, (4,): B})
    assert {p: i.label for p, i in got.items()} == {(1,): "II", (2,): "II", (3,): "IV-B"}
    assert got[(2,)].support == ((0,), (4,)) and got[(2,)].distance == 2.0 and got[(2,)].reason is None
    # an even split goes to the label whose cells are more confident
    got = ad.infer((5,), {(0,): ad.Measured("II", 0.6), (4,): ad.Measured("IV-B", 0.95)})
    assert got[(2,)].label == "IV-B"
    # 2-D: three corners II, one IV-B; the centre's four nearest (sqrt 2 away) vote 3:1
    m = {(0, 0): A, (0, 2): A, (2, 0): A, (2, 2): B}
    got = ad.infer((3, 3), m)
    assert got[(1, 1)].label == "II" and len(got[(1, 1)].support) == 4
    assert got[(0, 1)].label == "II"  # between two II corners
    assert got[(1, 2)].label == "II" and got[(2, 1)].label == "II"  # between II and IV-B: a split, alphabetical
    assert all(i.label is not None for i in got.values())  # a point with measured neighbours is never unknown
    # a measured cell without a label gives none: the nearest labelled ones decide
    got = ad.infer((5,), {(0,): A, (2,): ad.Measured(None, reason="mc still moving"), (4,): B})
    assert got[(1,)].label == "II" and got[(3,)].label == "IV-B"
    got = ad.infer((3,), {(0,): ad.Measured(None)})
    assert all(i.label is None and i.reason == "no measured cell has a label" for i in got.values())


def test_inference_applies_the_phase_rule_to_interpolated_values():
    # measured 0: loss 0.06 (above 0.05: II); 2: loss 0.001 (IV-B). The labels split evenly at 1 (the label
    # vote says II), but the loss crosses its threshold near 0: log10 midpoint -2.11 -> 0.0077 nats: IV-B
    m = {(0,): cell(0.06), (2,): cell(1e-3)}
    assert m[(0,)].label == "II" and m[(2,)].label == "IV-B"
    assert ad.infer((3,), m)[(1,)].label == "II"
    got = ad.infer((3,), m, RULE)[(1,)]
    assert got.label == "IV-B" and got.values["train_loss"] == pytest.approx(10 ** ((math.log10(0.06) - 3) / 2))
    assert got.support == ((0,), (2,)) and got.distance == 1.0
    # linear (in log loss) between cells 3 steps apart: 1 and 1e-4 -> 10**(-4/3) = 0.046 (IV-B) at 1, 0.0022 at 2
    m = {(0,): cell(1.0), (3,): cell(1e-4)}
    vals = ad.interpolate((4,), m, RULE.columns, RULE)
    assert vals[(1,)]["train_loss"] == pytest.approx(10 ** (-4 / 3)) and vals[(2,)]["train_loss"] == pytest.approx(
        10 ** (-8 / 3)
    )
    assert vals[(1,)]["connectivity.mc"] == pytest.approx(1.0) and vals[(1,)]["cka"] == pytest.approx(0.9)
    assert {p: i.label for p, i in ad.infer((4,), m, RULE).items()} == {(1,): "IV-B", (2,): "IV-B"}
    assert {p: i.label for p, i in ad.infer((4,), m).items()} == {(1,): "II", (2,): "IV-B"}  # labels alone
    # mc (linear): high loss at both ends, mc -2 (I) and +4 (II): the middle's mc is 1 -> II
    m = {(0,): cell(1.0, mc=-2.0), (2,): cell(1.0, mc=4.0)}
    assert m[(0,)].label == "I" and ad.infer((3,), m, RULE)[(1,)].label == "II"
    # farther than one step beyond the nearest: not used (1 takes 0's value alone, 4 away is out of reach)
    m = {(0,): cell(1.0), (4,): cell(1e-4)}
    assert ad.interpolate((5,), m, RULE.columns, RULE)[(1,)]["train_loss"] == pytest.approx(1.0)
    # no CKA anywhere: the rule decides nothing in phase IV, the labels of the nearest cells do; never unknown
    m = {(0,): cell(1e-3, cka=float("nan")), (2,): cell(1e-3, cka=float("nan"))}
    m = {p: ad.Measured("IV-A", 0.9, None, x.values) for p, x in m.items()}
    got = ad.infer((3,), m, RULE)[(1,)]
    assert got.label == "IV-A" and got.values is None
    # a measured cell without a label but with values still lends them
    m = {(0,): cell(1.0), (2,): ad.Measured(None, reason="mc still moving", values={"train_loss": 1e-4})}
    vals = ad.interpolate((4,), m, RULE.columns, RULE)
    assert vals[(3,)]["train_loss"] == pytest.approx(1e-4) and vals[(1,)]["train_loss"] == pytest.approx(1e-2)


def test_candidates_and_their_reasons():
    # 1-D, 9 values, measured 0 and 4 (II) and 8 (IV-B): only 6 lies between different labels
    c = ad.candidates((9,), {(0,): A, (4,): A, (8,): B})
    assert [(x.point, x.reason, x.distance) for x in c] == [((6,), "split", 2.0)]
    # after measuring 6 (IV-B): 5 lies between 4 (II) and 6 (IV-B)
    assert [x.point for x in ad.candidates((9,), {(0,): A, (4,): A, (6,): B, (8,): B})] == [(5,)]
    # an odd gap 0..3: no point is equidistant, both interior points are near the boundary ("edge")
    c = ad.candidates((4,), {(0,): A, (3,): B})
    assert [(x.point, x.reason) for x in c] == [((1,), "edge"), ((2,), "edge")]
    # low confidence and no label: rule boundary asks, rule labels does not
    low = {(0,): ad.Measured("II", 0.5), (4,): ad.Measured("II", 0.99)}
    assert [(x.point, x.reason) for x in ad.candidates((5,), low)] == [
        ((1,), "low_confidence"),
        ((2,), "low_confidence"),
    ]
    assert ad.candidates((5,), low, uncertain_below=0.4) == []
    assert ad.candidates((5,), low, rule="labels") == []
    none = {(0,): ad.Measured(None, reason="failed"), (4,): A}
    assert [(x.point, x.reason) for x in ad.candidates((5,), none)] == [((1,), "unresolved"), ((2,), "unresolved")]
    assert ad.candidates((5,), {(0,): A, (4,): A}) == []  # nothing uncertain


def test_candidates_follow_the_inferred_boundary():
    # 1-D, 9 values, measured 0 and 4 (high loss: II) and 8 (IV-B); losses 1, 0.1, 0.001: 6 is inferred at
    # log10 loss -2 (IV-B), so the boundary lies between 5 (II) and 6: 6 (nearest cells disagree) and 5 (its
    # neighbour 6 has another label) are uncertain, not 7 (IV-B, as its neighbours)
    m = {(0,): cell(1.0), (4,): cell(0.1), (8,): cell(1e-3)}
    assert [(x.point, x.reason) for x in ad.candidates((9,), m)] == [((6,), "split")]  # labels alone
    c = ad.candidates((9,), m, phase_rule=RULE)
    assert [(x.point, x.reason) for x in c] == [((5,), "edge"), ((6,), "split")]
    assert all(0 < x.balance <= 1 for x in c)
    wave = ad.next_wave((9,), m, budget_left=2, wave_size=2, phase_rule=RULE)
    assert [(x.point, x.reason) for x in wave] == [((6,), "split"), ((5,), "edge")]
    # balance = exp(-margin): the distance of the interpolated values to the nearest threshold on the rule's path,
    # in units of each value's spread over the measured cells (log10 loss: std of 0, -1, -3; mc and CKA do not
    # vary: unit 1). 5: loss 0.1 (high branch), margin min(|-1 - log10 0.05| / 1.247, |mc 1 - 0|) = 0.241;
    # 6: loss 0.01 (low branch), margin min(0.699 / 1.247, |mc 1 + 0.5|, |CKA 0.9 - 0.7|) = 0.2 (CKA)
    bal = {x.point: x.balance for x in c}
    spread = float(np.std([0.0, -1.0, -3.0]))
    assert bal[(5,)] == pytest.approx(math.exp(-(-1 - math.log10(0.05)) / spread))
    assert bal[(6,)] == pytest.approx(math.exp(-0.2))


def test_a_wave_bisects_a_square_whose_corners_disagree():
    corners = {(0, 0): A, (0, 4): A, (4, 0): A, (4, 4): B}
    wave = ad.next_wave((5, 5), corners, budget_left=10)
    # the centre (farthest), then the midpoints of the two edges whose ends disagree; not (0,2), (2,0)
    assert [(c.point, c.reason) for c in wave] == [((2, 2), "split"), ((2, 4), "split"), ((4, 2), "split")]
    assert wave[0].distance == pytest.approx(math.sqrt(8))
    # the budget caps the wave; default size is half the budget left
    assert [c.point for c in ad.next_wave((5, 5), corners, budget_left=2)] == [(2, 2)]
    assert [c.point for c in ad.next_wave((5, 5), corners, budget_left=10, wave_size=2)] == [(2, 2), (2, 4)]
    assert ad.next_wave((5, 5), corners, budget_left=0) == []
    assert ad.next_wave((5, 5), corners, budget_left=10, exclude={(2, 2), (2, 4), (4, 2)})[0].point != (2, 2)
    # a point closer to one taken in this wave than to anything measured waits for the next wave
    wave = ad.next_wave((9,), {(0,): A, (8,): B}, budget_left=9, wave_size=9)
    assert [c.point for c in wave] == [(4,)]


def test_random_rule_is_seeded_and_never_repeats_a_point():
    m = {(0, 0): A, (3, 3): B}
    a = ad.next_wave((4, 4), m, budget_left=6, wave_size=6, rule="random", seed=1)
    assert a == ad.next_wave((4, 4), m, budget_left=6, wave_size=6, rule="random", seed=1)
    pts = [c.point for c in a]
    assert len(pts) == len(set(pts)) == 6 and not set(pts) & set(m)


def test_simulated_sweep_finds_a_straight_boundary_from_half_the_grid():
    truth = {p: (A if p[0] + p[1] < 8 else B) for p in itertools.product(range(8), range(8))}
    waves, measured = ad.simulate((8, 8), truth, max_cells=32)
    assert len(measured) <= 32 and waves[0][0].reason == "initial" and len(waves[0]) == 16  # 4 x 4, half of 32
    labels = {p: v[1] for p, v in ad.complete_map((8, 8), measured).items()}
    assert ad.agreement(labels, {p: t.label for p, t in truth.items()}) >= 0.95
    # refined at the boundary: some pair of neighbours on both sides of it is measured
    assert any(truth[p].label != truth[q].label for p in measured for q in ad.neighbours(p, (8, 8)) if q in measured)


def test_simulated_sweep_with_fields_labels_every_point_from_a_quarter_of_the_grid():
    # the training loss falls a decade per 2 steps along both axes; its 0.05 threshold: p0 + p1 > 2.6
    truth = {p: cell(10 ** (-(p[0] + p[1]) / 2)) for p in itertools.product(range(8), range(8))}
    _, measured = ad.simulate((8, 8), truth, max_cells=16, phase_rule=RULE)
    assert len(measured) == 16
    full = ad.complete_map((8, 8), measured, RULE)
    assert all(lab is not None for _, lab, _ in full.values())
    got = ad.agreement({p: v[1] for p, v in full.items()}, {p: t.label for p, t in truth.items()})
    assert got == 1.0
    # the labels alone, from the same cells, miss some of the boundary
    alone = ad.complete_map((8, 8), measured)
    assert ad.agreement({p: v[1] for p, v in alone.items()}, {p: t.label for p, t in truth.items()}) < 1.0


def test_complete_cells_adds_every_point_with_its_source():
    grid = ad.Grid((ad.Axis("model.width", ("4", "8", "16")), ad.Axis("data.label_noise", ("0", "0.5"))))
    cells = pd.DataFrame(
        {
            "model.width": [4, 16, 8],
            "data.label_noise": [0.0, 0.0, 0.5],
            "status": ["done", "done", "missing"],  # width 8 at noise 0.5: launched, not finished
            "phase": ["II", "II", None],
            "phase_confidence": [0.95, 0.6, float("nan")],
            "phase_reason": [None, None, None],
            "uncertain": [False, True, False],
        }
    )
    out = ad.complete_cells(grid, cells)
    assert len(out) == 6
    by = {(r["model.width"], r["data.label_noise"]): r for _, r in out.iterrows()}
    assert by[(4, 0.0)]["label_source"] == "measured" and by[(16, 0.0)]["label_source"] == "measured"
    assert by[(8, 0.0)]["label_source"] == "inferred" and by[(8, 0.0)]["phase"] == "II"
    assert by[(8, 0.5)]["label_source"] == "inferred" and by[(8, 0.5)]["status"] == "missing"
    assert by[(4, 0.5)]["phase"] == "II" and not by[(4, 0.5)]["uncertain"]
    assert ad.complete_cells(grid, cells, {"data.label_noise": [0.0]}).shape[0] == 4  # noise 0.5 filtered out
    # with the phase rule: the measured cells' values, interpolated (width 8 at noise 0: losses 1 and 1e-4 -> 0.01)
    cells = cells.assign(
        phase=["II", "IV-B", None], **{"train_loss": [1.0, 1e-4, None], "connectivity.mc": [1.0, 1.0, None]}
    ).assign(cka=[0.9, 0.9, None])
    out = ad.complete_cells(grid, cells, phase_rule=RULE)
    by = {(r["model.width"], r["data.label_noise"]): r for _, r in out.iterrows()}
    assert by[(8, 0.0)]["phase"] == "IV-B" and by[(8, 0.0)]["label_source"] == "inferred"
    assert by[(8, 0.0)]["phase_support"].startswith("phase rule on values interpolated from 2 measured cell(s)")
    assert ad.complete_cells(grid, cells)[lambda d: d["model.width"] == 8]["phase"].tolist() == ["II", "II"]
    assert (out["label_source"] != "unmeasured").all()


def test_state_file_only_grows_and_survives_a_cut_line(tmp_path):
    grid = ad.Grid((ad.Axis("model.width", ("4", "8")),))
    ad.append_records(
        tmp_path,
        [{"kind": "launch", "grid": grid.to_dict(), "settings": {"max_cells": 1}, "cell_ids": {"0": "a", "1": "b"}}],
        ["launch"],
    )
    ad.append_records(tmp_path, [{"kind": "wave", "wave": 0, "cells": [{"point": [0], "cell_id": "a"}]}], ["wave 0"])
    with open(ad.state_path(tmp_path), "a") as f:
        f.write('{"kind": "wave", "wave": 1, "cel')  # a write cut short
    st = ad.read_state(tmp_path)
    assert st is not None and st.grid == grid and st.cell_ids == {(0,): "a", (1,): "b"}
    assert st.chosen() == {"a": 0} and st.next_wave_number() == 1
    assert ad.decisions_path(tmp_path).read_text() == "launch\nwave 0\n"
    assert ad.read_state(tmp_path / "nothing") is None


def test_three_axes_the_third_as_facets_on_both_figures(tmp_path):
    """A 3-axis grid (width x lr x label noise): the completed map has every point, the phase map draws the inferred
    cells of each facet (PatchCollection ``inferred``), the order figure one panel per noise value."""
    import matplotlib

    matplotlib.use("Agg")
    from landscape import phase_diagram as pd_fig
    from landscape.cli.adaptive import order_figure

    grid = ad.Grid(
        (
            ad.Axis("model.width", ("4", "8", "16")),
            ad.Axis("train.lr", ("0.01", "0.1")),
            ad.Axis("data.label_noise", ("0", "0.5")),
        )
    )
    measured = {(0, 0, 0): A, (2, 1, 0): B, (0, 0, 1): A, (2, 0, 1): A, (2, 1, 1): B}
    cells = pd.DataFrame(
        [
            {
                "model.width": int(grid.axes[0].values[p[0]]),
                "train.lr": float(grid.axes[1].values[p[1]]),
                "data.label_noise": float(grid.axes[2].values[p[2]]),
                "status": "done",
                "phase": m.label,
                "phase_confidence": 0.95,
                "n_models": 2,
            }
            for p, m in measured.items()
        ]
    )
    out = ad.complete_cells(grid, cells)
    assert len(out) == 12 and (out["label_source"] == "measured").sum() == 5
    fig = pd_fig.phase_map_figure(out, "model.width", "train.lr", "phase", facet="data.label_noise")
    panels = [ax for ax in fig.axes if any(c.get_gid() == "phase-map" for c in ax.collections)]
    assert len(panels) == 2
    drawn = [len(c.cells) for ax in panels for c in ax.collections if c.get_gid() == "inferred"]
    n_inferred = int((out["label_source"] == "inferred").sum())
    assert sum(drawn) == n_inferred > 0
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert f"inferred from the measured cells: {n_inferred} of 12 grid points" in legend
    assert "measured +" in legend
    full = ad.complete_map(grid.shape, measured)
    fig2 = order_figure(grid, {p: 0 for p in measured}, full)
    assert sum(1 for ax in fig2.axes if ax.get_title().startswith("data.label_noise = ")) == 2
    fig2.savefig(tmp_path / "order.png")
