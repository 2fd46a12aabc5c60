"""Every ``>>>`` example in FlowBot's docstrings runs and shows what it says, so the examples stay
true. An example that needs a model (or a network, or a file the reader would have) is marked
``# doctest: +SKIP`` where it stands; a module whose optional extra is not installed is skipped."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import flowbot

#: modules that import an optional extra at the top (the test skips them when it is missing)
EXTRAS = {"flowbot.runtime.ray_backend": "ray"}


def modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(flowbot.__path__, "flowbot."))


def test_every_module_is_found():
    names = modules()
    assert "flowbot.scoring.extract" in names and "flowbot.testing.server" in names and len(names) > 80


@pytest.mark.parametrize("name", modules())
def test_docstring_examples(name: str, tmp_path, monkeypatch) -> None:
    if name in EXTRAS:
        pytest.importorskip(EXTRAS[name])
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, name) if t.examples]
    if not tests:
        pytest.skip("no examples")
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, "".join(report)
