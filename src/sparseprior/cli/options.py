"""CLI options generated from config dataclasses (the way open_lth's hparams make their flags).

A command declares which configs it takes; every field becomes an option, nested configs get a
prefix (``train.lr`` -> ``--train-lr``), help text comes from the class docstring's
``Attributes:`` section, and the defaults are the dataclass's own (never repeated here). A
``--config file.json`` option loads a whole config; options given on the command line override it::

    @app.command()
    @config_options(run=DSTRunConfig)
    def train(run: DSTRunConfig, out: Path = typer.Option(None)) -> None:
        run_dst(run, out)

Only options the user typed override the file or the defaults, so a config saved by a run
(``config.json``) reruns it exactly: ``sparseprior dst train --config runs/x/config.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from sparseprior.common.config import Config

_SCALARS = (bool, int, float, str, Path)


@dataclasses.dataclass(frozen=True)
class FieldOption:
    """One generated option: the dotted config path, its type and help text."""

    path: tuple[str, ...]     # e.g. ("train", "lr")
    flag_path: tuple[str, ...]  # the path shown as the flag (flattened prefixes removed)
    kind: Any                 # bool/int/float/str/Path, or "list"/"json"
    item: Any                 # element type for lists/tuples
    default: Any
    help: str
    optional: bool = False    # ``None`` allowed: the option accepts ``none``

    @property
    def flag(self) -> str:
        return "--" + "-".join(p.replace("_", "-") for p in self.flag_path)

    @property
    def param(self) -> str:
        return "__".join(self.path)


def attribute_docs(cls: type) -> dict[str, str]:
    """``{field: help}`` from the ``Attributes:`` sections of ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = inspect.cleandoc(klass.__doc__ or "") if "__doc__" in vars(klass) else ""
        if "Attributes:" not in text:
            continue
        body = text.split("Attributes:", 1)[1]
        current: list[str] = []
        for line in body.splitlines():
            match = re.match(r"^    ([A-Za-z_][\w, ]*):\s*(.*)$", line)
            if match:
                current = [n.strip() for n in match.group(1).split(",")]
                for name in current:
                    docs[name] = match.group(2).strip()
            elif line.startswith("        ") and current:
                for name in current:
                    docs[name] += " " + line.strip()
            elif line.strip() and not line.startswith(" "):
                break  # next docstring section
    return {k: _plain(v) for k, v in docs.items()}


def _plain(text: str) -> str:
    """Docstring markup -> terminal text (``x`` -> x, :func:`~a.b` -> b)."""
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]*)``", r"\1", text)


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in \
        typing.get_args(tp)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _default_instance(cls: type[Config]) -> Config | None:
    try:
        return cls()
    except TypeError:  # required fields without defaults
        return None


def iter_options(cls: type[Config], prefix: tuple[str, ...] = (),
                 default: Config | None = None, flatten: tuple[str, ...] = (),
                 flag_prefix: tuple[str, ...] | None = None) -> Iterator[FieldOption]:
    """Every leaf field of ``cls`` (recursing into nested configs) as a :class:`FieldOption`.

    Nested configs whose field name is in ``flatten`` give their options without a prefix.
    """
    flag_prefix = prefix if flag_prefix is None else flag_prefix
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    default = default if default is not None else _default_instance(cls)
    for field in dataclasses.fields(cls):
        optional = _is_optional(hints[field.name])
        tp = _unwrap_optional(hints[field.name])
        value = getattr(default, field.name, None) if default is not None else None
        path = (*prefix, field.name)
        flag_path = (*flag_prefix, field.name)
        if isinstance(tp, type) and issubclass(tp, Config):
            sub_flag = flag_prefix if field.name in flatten else flag_path
            yield from iter_options(tp, path, value, flatten, sub_flag)
            continue
        origin = typing.get_origin(tp)
        if tp in _SCALARS:
            kind, item = tp, None
        elif origin in (list, tuple):
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            kind, item = "list", (args[0] if args and args[0] in _SCALARS else str)
        else:
            kind, item = "json", None
        help_text = field.metadata.get("help") or docs.get(field.name, "")
        yield FieldOption(path, flag_path, kind, item, value, _plain(help_text), optional)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "(empty)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def _parameter(opt: FieldOption) -> inspect.Parameter:
    help_text = f"{opt.help} (default: {_show(opt.default)})".strip()
    if opt.kind is bool:
        name = opt.flag[2:]
        decl = typer.Option(None, f"--{name}/--no-{name}", help=help_text, show_default=False)
        annotation: Any = bool | None
    else:
        if opt.optional:
            help_text += " ('none' to unset)"
        decl = typer.Option(None, opt.flag, help=help_text, show_default=False)
        annotation = opt.kind if opt.kind in _SCALARS and not opt.optional else str
        annotation = annotation | None
    return inspect.Parameter(opt.param, inspect.Parameter.KEYWORD_ONLY, default=decl,
                             annotation=annotation)


def _parse(opt: FieldOption, raw: Any) -> Any:
    if opt.optional and isinstance(raw, str) and raw.strip().lower() == "none":
        return None
    if opt.optional and opt.kind in (int, float):
        try:
            return opt.kind(raw)
        except ValueError:
            raise ValueError(f"{opt.flag} takes {opt.kind.__name__} or 'none', got "
                             f"{raw!r}") from None
    if opt.kind == "list":
        text = str(raw).strip()
        if not text:
            return []
        try:
            return [opt.item(part.strip()) for part in text.split(",")]
        except ValueError:
            raise ValueError(f"{opt.flag} takes a comma-separated list of "
                             f"{opt.item.__name__} values, got {raw!r}") from None
    if opt.kind == "json":
        try:
            return json.loads(raw)
        except ValueError:
            raise ValueError(f"{opt.flag} takes a JSON value, got {raw!r}") from None
    if opt.kind is Path:
        return str(raw)
    return raw


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON config file as a dict, with one-line errors for missing or bad files."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--config: no such file {str(path)!r}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"--config: cannot read {str(path)!r} as JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config: {str(path)!r} must hold a JSON object")
    return data


def build_config(cls: type[Config], options: list[FieldOption], given: dict[str, Any],
                 file_data: dict[str, Any] | None = None, strip: int = 0) -> Config:
    """Defaults <- ``file_data`` <- options the user typed; validated by ``cls``.

    ``strip`` drops that many leading path parts (the command's parameter-name prefix)."""
    default = _default_instance(cls)
    data = default.to_dict() if default is not None else {}
    data = _merge(data, file_data or {})
    for opt in options:
        raw = given.get(opt.param)
        if raw is None:
            continue
        path = opt.path[strip:]
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = _parse(opt, raw)
    return cls.from_dict(data)


def config_options(flatten: tuple[str, ...] = (),
                   **configs: type[Config]) -> Callable[[Callable], Callable]:
    """Decorator: replace the parameters named in ``configs`` by generated options.

    With several configs, each config's options get its parameter name as prefix and the
    ``--config`` file holds ``{param: {...}}``; with one config the file is the config itself.
    Nested config fields named in ``flatten`` give unprefixed options (``--method`` rather
    than ``--dst-method``).
    """

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name not in configs]
        several = len(configs) > 1
        generated: dict[str, list[FieldOption]] = {
            name: list(iter_options(cls, (name,) if several else (), flatten=flatten))
            for name, cls in configs.items()}
        params = [_parameter(o) for opts in generated.values() for o in opts]
        flags = [o.flag for opts in generated.values() for o in opts]
        names = [p.name for p in params] + [p.name for p in own]
        if (len(set(names)) != len(names) or len(set(flags)) != len(flags)
                or "config_file" in names):
            dup = sorted({f for f in flags if flags.count(f) > 1})
            raise TypeError(f"{fn.__name__}: generated options clash ({dup or names}); "
                            "flatten fewer nested configs")
        config_param = inspect.Parameter(
            "config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(None, "--config", help="JSON config file (e.g. a run's "
                                 "config.json); options given here override it."))

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            file_data = load_config_file(kwargs.pop("config_file")) if kwargs.get(
                "config_file") else {}
            built = {}
            for name, cls in configs.items():
                part = file_data.get(name, {}) if several else file_data
                built[name] = build_config(cls, generated[name], kwargs, part,
                                           strip=1 if several else 0)
            rest = {p.name: kwargs[p.name] for p in own}
            return fn(**built, **rest)

        own_kw = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        wrapper.__signature__ = sig.replace(parameters=[*own_kw, config_param, *params])
        hints = typing.get_type_hints(fn)
        wrapper.__annotations__ = {**{p.name: hints.get(p.name, p.annotation) for p in own},
                                   "config_file": Path | None,
                                   **{p.name: p.annotation for p in params}}
        del wrapper.__wrapped__  # typer must read the generated signature
        return wrapper

    return deco
