"""CLI options generated from config dataclasses (sparseprior.cli.options)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sparseprior.cli.options import attribute_docs, config_options
from sparseprior.common.config import Config


@dataclasses.dataclass
class Inner(Config):
    """Inner knobs.

    Attributes:
        lr: learning rate, ``> 0``.
        milestones: epochs of decay.
    """

    lr: float = 0.1
    milestones: list[int] = dataclasses.field(default_factory=list)
    limit: int | None = 5

    def validate(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclasses.dataclass
class Outer(Config):
    """Outer config.

    Attributes:
        name: a name.
        fast, verbose: two switches.
        inner: nested knobs.
    """

    name: str = "a"
    fast: bool = False
    verbose: bool = True
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(lr=0.5))


def _app(seen: list) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @config_options(cfg=Outer)
    def run(cfg: Outer, out: Path = typer.Option(Path("o"), help="out")) -> None:
        seen.append((cfg, out))

    @app.command()
    def other() -> None:  # a second command keeps typer in multi-command mode
        pass

    return app


def test_attribute_docs_handles_shared_entries():
    docs = attribute_docs(Outer)
    assert docs["fast"] == docs["verbose"] == "two switches."
    assert attribute_docs(Inner)["lr"] == "learning rate, > 0."


def test_defaults_come_from_the_dataclass_including_nested_factories():
    seen: list = []
    result = CliRunner().invoke(_app(seen), ["run"])
    assert result.exit_code == 0, result.output
    assert seen[0][0] == Outer()            # inner.lr stays 0.5, the parent's default
    assert seen[0][1] == Path("o")


def test_options_override_file_and_defaults(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"name": "file", "inner": {"lr": 0.2}}))
    seen: list = []
    result = CliRunner().invoke(_app(seen), [
        "run", "--config", str(cfg), "--inner-milestones", "3,5", "--fast", "--no-verbose"])
    assert result.exit_code == 0, result.output
    got = seen[0][0]
    assert (got.name, got.fast, got.verbose) == ("file", True, False)
    assert got.inner == Inner(lr=0.2, milestones=[3, 5])


def test_help_lists_generated_options_with_defaults():
    result = CliRunner().invoke(_app([]), ["run", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for flag in ("--name", "--fast", "--inner-lr", "--inner-milestones", "--config"):
        assert flag in result.output
    assert "(default: 0.5)" in result.output


def test_bad_values_are_value_errors():
    app = _app([])
    result = CliRunner().invoke(app, ["run", "--inner-lr", "-1"])
    assert isinstance(result.exception, ValueError) and "lr must be > 0" in str(result.exception)
    result = CliRunner().invoke(app, ["run", "--inner-milestones", "a,b"])
    assert isinstance(result.exception, ValueError)
    assert "--inner-milestones" in str(result.exception)
    result = CliRunner().invoke(app, ["run", "--config", "/nonexistent.json"])
    assert isinstance(result.exception, ValueError) and "no such file" in str(result.exception)


def test_clashing_flattened_options_are_refused():
    @dataclasses.dataclass
    class Twice(Config):
        a: Inner = dataclasses.field(default_factory=Inner)
        b: Inner = dataclasses.field(default_factory=Inner)

    with pytest.raises(TypeError, match="clash"):
        config_options(cfg=Twice, flatten=("a", "b"))(lambda cfg: None)


def test_optional_fields_accept_none_and_typed_values():
    seen: list = []
    app = _app(seen)
    assert CliRunner().invoke(app, ["run", "--inner-limit", "none"]).exit_code == 0
    assert CliRunner().invoke(app, ["run", "--inner-limit", "7"]).exit_code == 0
    assert [c.inner.limit for c, _ in seen] == [None, 7]
    result = CliRunner().invoke(app, ["run", "--inner-limit", "x"])
    assert isinstance(result.exception, ValueError) and "int or 'none'" in str(result.exception)


def test_several_configs_get_prefixes_and_a_nested_file():
    seen: list = []
    app = typer.Typer()

    @app.command()
    @config_options(a=Inner, b=Outer)
    def both(a: Inner, b: Outer) -> None:
        seen.append((a, b))

    @app.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(app, ["both", "--a-lr", "0.3", "--b-inner-lr", "0.7",
                                      "--b-name", "z"])
    assert result.exit_code == 0, result.output
    a, b = seen[0]
    assert a.lr == 0.3 and b.inner.lr == 0.7 and b.name == "z"
