"""The command line: the long studies show progress unless asked not to."""
from __future__ import annotations

import importlib
from typing import Any

import pytest

from wsss import cli


class _Called(Exception):
    pass


@pytest.mark.parametrize("argv, module, function", [
    (["study", "--preset", "tiny", "--seeds", "1"], "wsss.claims", "run_study"),
    (["ceiling", "--preset", "tiny", "--seeds", "1"], "wsss.ceiling", "run_ceiling"),
    (["dose-response", "--knob", "cooccurrence", "--preset", "tiny"], "wsss.dose_response", "measure_dose_response"),
    (["part-interventions", "--preset", "tiny", "--seeds", "1"], "wsss.analysis.probes", "part_intervention_study"),
])
def test_the_long_studies_show_progress_bars_unless_told_not_to(argv: list[str], module: str, function: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Any] = []

    def record(*args: Any, **kwargs: Any) -> None:
        seen.append(kwargs.get("progress"))
        raise _Called  # measure nothing: the command reports it as its one-line error

    monkeypatch.setattr(importlib.import_module(module), function, record)
    assert cli.main(argv) == 1 and cli.main([*argv, "--no-progress"]) == 1
    assert seen == [True, False]
    assert capsys.readouterr().err.count("wsss: error: _Called") == 2


def test_a_bar_takes_the_style_its_environment_asks_for_when_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process asks for text bars after its imports (`wsss.parallel`): the style is read per bar."""
    import io

    from wsss.progress import TEXT_ENV, tqdm

    monkeypatch.setenv(TEXT_ENV, "1")
    out = io.StringIO()
    with tqdm(total=3, desc="sparse", file=out) as bar:
        bar.update(3)
        assert (bar.mininterval, bar.ascii) == (30.0, True)
    assert "sparse: 100%|##########| 3/3" in out.getvalue()
    monkeypatch.delenv(TEXT_ENV)
    with tqdm(total=3, file=io.StringIO()) as bar:
        assert bar.mininterval < 30.0
