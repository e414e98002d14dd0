"""RunCatalog: one view over a store, a run folder, or a folder of run folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.observe.catalog import open_catalog
from recorded_runs import record_run


def test_catalog_lists_the_runs_of_every_run_folder(runs_dir: Path) -> None:
    with open_catalog(runs_dir) as catalog:
        runs = catalog.list_runs()

    assert [run.name for run in runs] == ["alpha", "beta"]
    assert [run.rounds_done for run in runs] == [3, 1]


@pytest.mark.parametrize("where", ["folder", "file", "url"])
def test_catalog_opens_one_run_folder_file_or_url(runs_dir: Path, where: str) -> None:
    folder = runs_dir / "alpha"
    location = {
        "folder": str(folder),
        "file": str(folder / "store.db"),
        "url": f"sqlite:///{(folder / 'store.db').resolve()}",
    }[where]

    with open_catalog(location) as catalog:
        assert [run.run_id for run in catalog.list_runs()] == ["run-alpha"]


def test_catalog_finds_a_run_by_id_or_name(runs_dir: Path) -> None:
    with open_catalog(runs_dir) as catalog:
        by_name = catalog.get_run("alpha")
        by_id = catalog.get_run("run-alpha")
        rounds = catalog.rounds("alpha")
        weights = catalog.load_weights("alpha", 2)

    assert by_name == by_id
    assert [r.server_round for r in rounds] == [0, 1, 2, 3]
    np.testing.assert_array_equal(weights["w"], [2.0, 2.0])


def test_catalog_unknown_run_names_the_known_ones(runs_dir: Path) -> None:
    with open_catalog(runs_dir) as catalog, pytest.raises(ConfigError) as info:
        catalog.get_run("alpah")

    message = str(info.value)
    assert "no run 'alpah'" in message
    assert "Did you mean 'alpha'?" in message
    assert "beta (run-beta)" in message


def test_catalog_refuses_a_name_two_runs_share(tmp_path: Path) -> None:
    record_run(tmp_path / "runs" / "one", run_id="id-1", name="same", rounds=1)
    record_run(tmp_path / "runs" / "two", run_id="id-2", name="same", rounds=1)

    with open_catalog(tmp_path / "runs") as catalog, pytest.raises(ConfigError, match="2 runs"):
        catalog.get_run("same")


def test_catalog_picks_up_a_run_folder_made_later(runs_dir: Path) -> None:
    with open_catalog(runs_dir) as catalog:
        before = len(catalog.list_runs())
        record_run(runs_dir / "gamma", run_id="run-gamma", name="gamma", rounds=1)

        after = [run.name for run in catalog.list_runs()]
        found = catalog.get_run("gamma").run_id

    assert before == 2
    assert after == ["alpha", "beta", "gamma"]
    assert found == "run-gamma"


def test_catalog_missing_location_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no store at .*does not exist"):
        open_catalog(tmp_path / "nowhere")

    assert not (tmp_path / "nowhere").exists()
