"""No result lost, none served stale: table keys, history, caches, named runs, `wsss run` and the CLI."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from wsss import cache
from wsss.cli import main as cli
from wsss.experiment import Experiment, ExperimentConfig
from wsss.report import COLUMNS, read_rows, record
from wsss.runner import NotebookFailed, output_name, run_notebook

ROW = dict(method="cam", variant="CAM", stage="cam", split="val", bg_threshold=0.05, crf=False, miou=0.14,
           fg_precision=0.2, fg_recall=0.3, boundary_iou=0.1, config_hash="abc", seed=0, preset="tiny")
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


# ------------------------------------------------------------------------------------ the table


def test_runs_differing_in_seed_or_preset_keep_their_own_rows(tmp_path: Path) -> None:
    record([ROW, {**ROW, "seed": 1, "config_hash": "def", "miou": 0.2},
            {**ROW, "preset": "quick", "config_hash": "ghi", "miou": 0.4}], tmp_path)
    rows = read_rows(tmp_path / "metrics.csv")
    assert sorted((r["preset"], r["seed"]) for r in rows) == [("quick", "0"), ("tiny", "0"), ("tiny", "1")]
    md = (tmp_path / "metrics.md").read_text()
    assert "| preset | seed |" in md and "| cam | CAM | cam | val | tiny | 1 | 20.0 |" in md


def test_one_result_under_two_names_is_kept_once(tmp_path: Path) -> None:
    record([ROW], tmp_path)
    record([{**ROW, "variant": "cam"}], tmp_path)  # the comparison notebook's name for the same evaluation
    assert [r["variant"] for r in read_rows(tmp_path / "metrics.csv")] == ["CAM"]
    record([{**ROW, "variant": "cam", "miou": 0.5}], tmp_path)  # another result: a row of its own
    assert len(read_rows(tmp_path / "metrics.csv")) == 2


def test_a_replaced_row_with_other_numbers_goes_to_the_history(tmp_path: Path) -> None:
    record([ROW], tmp_path)
    record([ROW], tmp_path)  # same numbers: nothing to keep
    assert not (tmp_path / "metrics_history.csv").exists()
    record([{**ROW, "miou": 0.16}], tmp_path)
    assert [r["miou"] for r in read_rows(tmp_path / "metrics_history.csv")] == ["0.14"]
    assert [r["miou"] for r in read_rows(tmp_path / "metrics.csv")] == ["0.16"]


def test_a_history_under_an_older_header_is_rewritten_not_shifted(tmp_path: Path) -> None:
    old = [c for c in COLUMNS if c not in ("context_recall", "preset")]
    with open(tmp_path / "metrics_history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old, extrasaction="ignore")
        w.writeheader()
        w.writerow({**ROW, "code_version": "old"})
    record([ROW], tmp_path)
    record([{**ROW, "miou": 0.3, "context_recall": 0.7}], tmp_path)
    rows = read_rows(tmp_path / "metrics_history.csv")
    assert [(r["miou"], r["code_version"], r["context_recall"]) for r in rows] == [("0.14", "old", ""), ("0.14", "", "")]


def test_a_damaged_table_is_an_error_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("method,variant\ncam,CAM\ncam,CAM,extra\n")
    with pytest.raises(ValueError, match=r"metrics.csv, line 3: 3 fields under a header of 2"):
        record([ROW], tmp_path)


def test_parallel_writers_keep_every_row(tmp_path: Path) -> None:
    from concurrent.futures import ProcessPoolExecutor

    rows = [{**ROW, "seed": s, "config_hash": f"h{s}", "miou": s / 10} for s in range(8)]
    with ProcessPoolExecutor(4) as pool:
        list(pool.map(record, [[r] for r in rows], [tmp_path] * len(rows)))
    assert sorted(int(r["seed"]) for r in read_rows(tmp_path / "metrics.csv")) == list(range(8))


# ------------------------------------------------------------------------------------ caches


def test_cached_json_is_recomputed_when_its_key_changes_and_stamps_its_own_code_version(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    calls = []

    def compute() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    path = tmp_path / "x.json"
    first = cache.cached_json(path, {"ids": ["a", "b"]}, compute)
    monkeypatch.setattr(cache, "code_version", lambda: "later")
    assert cache.cached_json(path, {"ids": ["a", "b"]}, compute) == first  # same key: served, old stamp kept
    assert first["code_version"] != "later"
    again = cache.cached_json(path, {"ids": ["a"]}, compute)
    assert again["result"] == {"n": 2} and again["code_version"] == "later"


def test_comments_and_docstrings_leave_the_code_fingerprint_alone() -> None:
    from wsss.cache import executable_source

    code = '"""A module."""\n\ndef f(x):\n    """Twice x."""\n    return 2 * x  # doubled\n'
    reworded = '"""The module, reworded."""\ndef f(x):\n    """Two times x."""\n\n    return 2 * x\n'
    changed = '"""A module."""\n\ndef f(x):\n    """Twice x."""\n    return 3 * x  # doubled\n'
    assert executable_source(code) == executable_source(reworded)
    assert executable_source(code) != executable_source(changed)


def test_a_folder_built_under_another_key_is_rebuilt_without_its_old_files(tmp_path: Path) -> None:
    def build(ids: list[str]):
        return lambda out: [(out / f"{i}.txt").write_text(i) for i in ids]

    out = tmp_path / "maps"
    cache.cached_folder(out, {"ids": ["a", "b"]}, build(["a", "b"]), "maps")
    (out / "b.txt").write_text("touched")
    cache.cached_folder(out, {"ids": ["a", "b"]}, build(["a", "b"]), "maps")
    assert (out / "b.txt").read_text() == "touched"  # same key: not rebuilt
    cache.cached_folder(out, {"ids": ["a"]}, build(["a"]), "maps")
    assert sorted(p.name for p in out.iterdir()) == ["_done", "a.txt"]


@pytest.mark.slow
def test_a_shrunk_split_is_evaluated_afresh(tiny_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)
    exp = Experiment(ExperimentConfig.for_preset("tiny", data_root=str(data), run_root=str(tmp_path / "runs"),
                                                 max_steps=2), progress=False)
    full = exp.evaluate(bg_threshold=0.3)
    val = data / "ImageSets" / "Segmentation" / "val.txt"
    val.write_text("\n".join(val.read_text().split()[:4]) + "\n")
    shrunk = Experiment(exp.config, progress=False)
    cached = shrunk.evaluate(bg_threshold=0.3)
    assert len(list((shrunk.run_dir / "cams" / "val").glob("*.npz"))) == 4
    assert cached["miou"] != pytest.approx(full["miou"], abs=1e-9)
    for stale in [shrunk.run_dir / "cams", *shrunk.run_dir.glob("*.json")]:  # a fresh evaluation, from scratch
        if stale.name != "config.json" and stale.name != "train_summary.json":
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    assert Experiment(exp.config, progress=False).evaluate(bg_threshold=0.3)["miou"] == pytest.approx(cached["miou"])


def test_a_changed_pixel_budget_recomputes_the_class_maps(tiny_root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge image's maps depend on the budget of pixels per pass, so the budget is in the key."""
    from wsss.inference import MAX_PIXELS_ENV

    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    exp = Experiment(ExperimentConfig.for_preset("tiny", data_root=str(tiny_root), run_root=str(tmp_path),
                                                 max_steps=1), progress=False)
    default = exp.class_maps_key("val")
    monkeypatch.setenv(MAX_PIXELS_ENV, "1e6")
    assert exp.class_maps_key("val") == {**default, "max_pixels": 10**6} != default


def test_reported_paths_are_relative_to_the_project_root(monkeypatch, tmp_path: Path) -> None:
    from wsss.paths import portable

    monkeypatch.setenv("WSSS_HOME", str(tmp_path))
    assert portable(tmp_path / "runs" / "x" / "config.json") == "runs/x/config.json"
    assert portable("/elsewhere/data") == "/elsewhere/data"


# ------------------------------------------------------------------------------------ named runs


def test_a_named_run_whose_config_changed_refuses_to_reuse_its_model(tmp_path: Path) -> None:
    cfg = ExperimentConfig.for_preset("tiny", name="mine", run_root=str(tmp_path))
    exp = Experiment(cfg, progress=False)
    (exp.run_dir / "model.pt").write_bytes(b"trained")
    Experiment(cfg, progress=False)  # the same config: fine
    changed = ExperimentConfig.for_preset("tiny", name="mine", run_root=str(tmp_path), lr=1e-3)
    with pytest.raises(ValueError, match=r"another config .*differs in \['train'\]"):
        Experiment(changed, progress=False)
    assert json.loads((exp.run_dir / "config.json").read_text())["config_hash"] == cfg.config_hash()


def test_unknown_presets_and_missing_data_are_rejected_before_a_folder_is_made(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset 'tinyy'"):
        ExperimentConfig.for_preset("tinyy", run_root=str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        ExperimentConfig.for_preset("tiny", data_root=str(tmp_path / "nope"))
    assert not any(tmp_path.iterdir())


def test_a_tree_without_meta_json_is_stated_as_real_voc(tiny_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "voc"
    shutil.copytree(tiny_root, data)
    (data / "meta.json").unlink()
    with pytest.warns(UserWarning, match="no meta.json.*real PASCAL VOC"):
        cfg = ExperimentConfig.for_preset("tiny", data_root=str(data))
    assert cfg.train.optimizer == "sgd" and cfg.train.lr == 0.1


# ------------------------------------------------------------------------------------ wsss run and the CLI


def test_output_names_follow_the_parameters() -> None:
    nb = NOTEBOOKS / "01_cam_baseline.ipynb"
    assert output_name(nb, {}) == "01_cam_baseline.ipynb"
    assert output_name(nb, {"seed": 1, "preset": "tiny"}) == "01_cam_baseline__preset-tiny__seed-1.ipynb"
    assert output_name(nb, {"data_root": "/a/../b c"}) == "01_cam_baseline__data_root-a_.._b_c.ipynb"
    assert len(output_name(nb, {"data_root": "x" * 300})) < 60


def test_unknown_or_mistyped_parameters_are_errors_listing_the_notebook_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no parameter epoch; its parameters: preset='quick'.*epochs=None"):
        run_notebook("01_cam_baseline", {"epoch": 3}, output_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"parameter seed of 01_cam_baseline takes int values \(default 0\), got 'x'"):
        run_notebook("01_cam_baseline", {"seed": "x"}, output_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_the_cli_prints_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["run", "01_cam_baseline", "-p", "epoch", "3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wsss: error: 01_cam_baseline has no parameter epoch")
    assert cli(["run", "01_cam_baseline", "-p", "seed", "1", "-p", "seed", "2"]) == 1
    assert "seed given more than once" in capsys.readouterr().err
    with pytest.raises(ValueError):
        cli(["--debug", "run", "01_cam_baseline", "-p", "epoch", "3"])


def test_the_cli_lists_the_notebooks_and_their_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["notebooks", "02_eps"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "02_eps" and '    preset = "quick"  # SynthVOC preset: tiny, quick or full' in out
    assert any(line.startswith("    taus = [0.2, 0.4, 0.6]") for line in out)


def test_the_cli_help_lists_every_command_without_importing_torch() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom wsss import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    from wsss.numerics import PORTABLE_ENV

    env = {k: v for k, v in os.environ.items() if k != PORTABLE_ENV}  # a user's environment, not the tests'
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip().endswith("False")
    assert all(name in out for name in ("data", "eval", "pretrain", "run", "demo"))


@pytest.mark.slow
def test_a_failed_run_keeps_the_last_good_notebook(tiny_root: Path, tmp_path: Path) -> None:
    good = tmp_path / "00_dataset__preset-tiny.ipynb"
    run_notebook("00_dataset", {"preset": "tiny"}, output_dir=tmp_path, progress=False)
    before = good.read_bytes()
    recorded = nbformat.read(good, as_version=4).metadata.papermill
    assert (recorded.input_path, recorded.output_path) == ("notebooks/00_dataset.ipynb", str(good))  # not the temp name
    with pytest.raises(NotebookFailed, match=r"unknown preset 'tinyy'.*00_dataset__preset-tiny.failed.ipynb"):
        run_notebook("00_dataset", {"preset": "tinyy"}, output_dir=tmp_path, progress=False,
                     output=good.name)
    assert good.read_bytes() == before
    failed = nbformat.read(tmp_path / "00_dataset__preset-tiny.failed.ipynb", as_version=4)
    assert any(o.output_type == "error" for c in failed.cells for o in c.get("outputs", []))
    assert {p.name for p in tmp_path.iterdir()} == {good.name, "00_dataset__preset-tiny.failed.ipynb"}


@pytest.mark.slow
def test_a_seed_loop_keeps_a_row_and_a_notebook_per_seed(tiny_root: Path, tmp_path: Path, monkeypatch) -> None:
    reports = tmp_path / "reports"
    monkeypatch.setenv("WSSS_REPORTS", str(reports))
    for seed in (0, 1):  # the CAM runs of these seeds are shared with the claims tests
        assert cli(["run", "01_cam_baseline", "-p", "preset", "tiny", "-p", "seed", str(seed), "-p", "crf", "false"]) == 0
    assert sorted(p.name for p in (reports / "runs").glob("*.ipynb")) == [
        "01_cam_baseline__crf-False__preset-tiny__seed-0.ipynb", "01_cam_baseline__crf-False__preset-tiny__seed-1.ipynb"]
    rows = read_rows(reports / "metrics.csv")
    assert sorted(r["seed"] for r in rows) == ["0", "1"] and len({r["config_hash"] for r in rows}) == 2


@pytest.mark.slow
def test_a_model_trained_on_other_training_masks_is_never_served(tiny_root: Path, tmp_path: Path) -> None:
    """SANCE learns from CAM seeds made with a threshold chosen on train: when the seeds change (another
    rule, another CAM), the run's model is stale; it is refused with the reason, and not deleted."""
    from wsss.experiment import TRAINING_INPUTS, StaleRunError, experiment_factory

    make = experiment_factory("tiny", progress=False, run_root=str(tmp_path), max_steps=1)
    run = make("sance")
    run.trained_method()
    seeds = run.method.training_masks(run, run.config.train_split)["seed"]
    assert json.loads((run.run_dir / TRAINING_INPUTS).read_text())["seed"]
    make("sance").class_maps()  # unchanged seeds: served
    first = sorted(seeds.glob("*.png"))[0]
    first.write_bytes(sorted(seeds.glob("*.png"))[1].read_bytes())  # one image's seeds changed
    with pytest.raises(StaleRunError, match="other training masks"):
        make("sance").trained_method()
    with pytest.raises(StaleRunError):
        make("sance").class_maps()
    assert (run.run_dir / "model.pt").is_file()
