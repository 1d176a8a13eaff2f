"""Tuning search spaces, ranking and snippet: values, not just shapes."""


import pandas as pd
import pytest

from orchestrator.plan import search_space
from orchestrator.report import heatmap
from orchestrator.report import ranking as rank
from trainers.errors import UserError


def test_dyadic_grid_holds_the_papers_cifar10_pair():
    space = search_space.parse_space("tune-cifar10.space",
                               {"afwd": {"dyadic": [8, 12]}, "abkw": {"dyadic": [5, 9]}})
    points = search_space.grid_points(space)
    assert len(points) == 5 * 5
    assert {"afwd": 1023 / 1024, "abkw": 127 / 128} in points
    assert min(p["afwd"] for p in points) == 1 - 2 ** -8


def test_random_points_are_reproducible_distinct_and_in_range():
    space = search_space.parse_space("t", {"afwd": {"loguniform": [1e-4, 1e-1]},
                                     "abkw": {"dyadic": [2, 6]}})
    first = search_space.random_points(space, 12, seed=3)
    assert first == search_space.random_points(space, 12, seed=3)
    assert first != search_space.random_points(space, 12, seed=4)
    assert len({(p["afwd"], p["abkw"]) for p in first}) == 12
    for p in first:
        assert 1e-4 <= 1 - p["afwd"] <= 1e-1 + 1e-12
        assert p["abkw"] in [1 - 2 ** -k for k in range(2, 7)]


@pytest.mark.parametrize("raw, fragment", [
    ({"afwd": {"dyadic": [8, 12]}}, "both afwd and abkw"),
    ({"afwd": {"cubic": [1, 2]}, "abkw": {"dyadic": [1, 2]}}, "unknown space kind 'cubic'"),
    ({"afwd": {"dyadic": [0.5, 2]}, "abkw": {"dyadic": [1, 2]}}, "integers 1 <= kmin"),
    ({"afwd": {"loguniform": [0.0, 0.1]}, "abkw": {"dyadic": [1, 2]}}, "0 < low <= high < 1"),
])
def test_bad_spaces_name_the_key(raw, fragment):
    with pytest.raises(UserError, match=fragment):
        search_space.parse_space("tune-x.space", raw)


def test_grid_refuses_continuous_axis():
    space = search_space.parse_space("t", {"afwd": {"loguniform": [1e-3, 1e-1]},
                                     "abkw": {"dyadic": [2, 3]}})
    with pytest.raises(UserError, match="afwd is loguniform"):
        search_space.grid_points(space)


def test_ranking_uses_median_over_seeds_of_each_runs_best():
    rows = []
    # config A: two seeds whose best accuracies are 50 and 70 -> median 60
    for tid, curve in (("a1", [40, 50, 45]), ("a2", [70, 60, 65])):
        rows += [dict(trial_id=tid, afwd=0.5, abkw=0.75, epoch=e + 1, val_acc1=v)
                 for e, v in enumerate(curve)]
    # config B: one seed stopped early at epoch 1 with best 55
    rows.append(dict(trial_id="b1", afwd=0.75, abkw=0.75, epoch=1, val_acc1=55.0))
    trials = pd.DataFrame({"trial_id": ["a1", "a2", "b1"],
                           "status": ["completed", "completed", "stopped"]})
    ranking = rank.rank_configurations(pd.DataFrame(rows), trials)
    assert list(ranking["afwd"]) == [0.5, 0.75]
    assert list(ranking["median_best_val_acc1"]) == [60.0, 55.0]
    assert list(ranking["runs"]) == [2, 1]
    assert list(ranking["stopped"]) == [0, 1]


def test_snippet_writes_dyadic_values_as_exact_fractions():
    snippet = rank.yaml_snippet({"afwd": 1023 / 1024, "abkw": 0.9375})
    assert "afwd: 1023/1024" in snippet and "abkw: 15/16" in snippet
    assert "afwd: 0.9987" in rank.yaml_snippet({"afwd": 0.9987, "abkw": 0.5})


def test_heatmap_grid_spans_every_k_and_leaves_unrun_cells_blank(tmp_path):
    import math

    ranking = pd.DataFrame({"afwd": [0.5, 0.5, 0.75], "abkw": [0.5, 0.875, 0.5],
                            "median_best_val_acc1": [10.0, 20.0, 30.0]})
    rows, cols, grid = rank.dyadic_grid(ranking)
    assert rows == [1, 2] and cols == [1, 2, 3]           # abkw k=2 (3/4) never ran
    assert grid[0, 0] == 10.0 and grid[0, 2] == 20.0 and grid[1, 0] == 30.0
    assert math.isnan(grid[0, 1]) and math.isnan(grid[1, 2])
    continuous = ranking.assign(afwd=[0.5, 0.5, 0.7])
    assert rank.dyadic_grid(continuous) is None         # drawn as a scatter instead
    for frame in (ranking, continuous):
        path = heatmap.plot_heatmap(frame, tmp_path / "heat.png", "t")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_leaves_the_process_backend_alone_and_never_half_writes(tmp_path, monkeypatch):
    import matplotlib
    from matplotlib.figure import Figure

    frame = pd.DataFrame({"afwd": [0.5, 0.75], "abkw": [0.5, 0.5],
                          "median_best_val_acc1": [50.0, 60.0]})
    before = matplotlib.get_backend()
    matplotlib.use("svg")   # whatever the caller chose
    try:
        heatmap.plot_heatmap(frame, tmp_path / "heat.png", "t")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    old = (tmp_path / "heat.png").read_bytes()

    def dies_half_way(self, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")
    monkeypatch.setattr(Figure, "savefig", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        heatmap.plot_heatmap(frame, tmp_path / "heat.png", "t")
    assert (tmp_path / "heat.png").read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["heat.png"]   # no temporary left behind
