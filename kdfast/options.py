"""Each option said once. A stage's configuration dataclass declares every option: its type, default and help
(``option``, beside the field); the Typer command is built from those fields (``command``), as litgpt builds its
CLI from a function's signature. A field declared without ``option`` is not a flag: a configuration file sets it.

``--config FILE`` (YAML or TOML) sets any field; a flag given on the command line wins over the file. Every run
folder records its resolved configuration as ``config.yaml`` (``write_config``), which ``--config`` reads back.

Light on purpose: ``kdfast --help`` builds every command from these, so nothing here imports torch."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from kdfast.errors import KdfastError, first_line

KEY = "kdfast.option"  # the field metadata key holding its ``Option``
CONFIG_FILE = "config.yaml"  # the resolved configuration, in every run folder
CONFIG_HELP = ("A YAML or TOML file of options (any field of the configuration, e.g. a run folder's config.yaml); "
               "flags given on the command line win.")
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")
UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()  # no value given (MISSING is dataclasses' own)


@dataclass(frozen=True)
class Option:
    """How a field appears on the command line (everything but its name, type and default, which are the field's)."""

    help: str | None = None
    decls: tuple[str, ...] = ()  # the flag's names when not --field-name: ("--plain",), ("--json",), ("--file", "-f")
    argument: bool = False  # a positional argument
    name: str | None = None  # the parameter's name when not the field's (a flag named --json: json_out)
    invert: bool = False  # the flag is the field's negation (--no-check sets check=False)
    cli_type: Any = None  # the flag's type when the field's differs (--batch-sizes 1,32 for a list of ints) ...
    cli_default: Any = UNSET  # ... its default then ...
    parse: Callable[[Any], Any] | None = None  # ... and how its value becomes the field's
    prefix: str = ""  # a nested configuration: its fields' flags are prefixed so (--int8-max-drop: int8_tuning)
    required: bool = False  # no default on the command line (the field's default is for Python callers)


def option(default: Any = MISSING, help: str | None = None, *decls: str, factory: Callable[[], Any] | None = None,
           **cli: Any) -> Any:
    """A dataclass field that is also a command-line option: ``epochs: int = option(10, "Epochs.")``. ``decls`` are
    the flag's names when not ``--field-name``; ``cli`` the rest of ``Option``."""
    meta = {KEY: Option(help=help, decls=decls, **cli)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Param:
    """One command-line parameter and the field it fills: ``path`` names it through nested configurations."""

    name: str
    path: tuple[str, ...]
    annotation: Any
    field_type: Any
    default: Any  # the command line's
    field_default: Any  # the field's
    spec: Option

    def info(self) -> Any:
        import typer

        default = ... if self.spec.required or self.default is MISSING else self.default
        if self.spec.argument:
            return typer.Argument(default, help=self.spec.help)
        return typer.Option(default, *self.spec.decls, help=self.spec.help)

    def to_field(self, value: Any) -> Any:
        if self.spec.invert:
            return not value
        if self.spec.parse is not None:
            return self.spec.parse(value)
        return value


def field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def params(cls: type, prefix: str = "", path: tuple[str, ...] = ()) -> list[Param]:
    """The command-line parameters of a configuration class, in field order (nested configurations inline)."""
    out = []
    types_ = hints(cls)
    for f in fields(cls):
        spec = f.metadata.get(KEY)
        if spec is None:
            continue
        if spec.prefix:
            out += params(types_[f.name], prefix + spec.prefix, (*path, f.name))
            continue
        default = field_default(f)
        if spec.invert:
            cli_default: Any = not default
        elif spec.cli_default is not UNSET:
            cli_default = spec.cli_default
        else:
            cli_default = default
        name = spec.name or prefix + f.name
        out.append(Param(name, (*path, f.name), spec.cli_type or (bool if spec.invert else types_[f.name]),
                         types_[f.name], cli_default, default, spec))
    return out


def config_only(cls: type) -> list[str]:
    """The fields no flag sets (a configuration file does), nested ones as ``outer.inner``."""
    out = []
    types_ = hints(cls)
    for f in fields(cls):
        spec = f.metadata.get(KEY)
        if spec is None:
            out.append(f.name)
        elif spec.prefix:
            out += [f"{f.name}.{n}" for n in config_only(types_[f.name])]
    return out


def command(cls: type, *, config: bool = True, extra: dict[str, tuple[Any, Any]] | None = None
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make ``fn(cfg, **extra)`` a Typer command whose options are ``cls``'s fields: the decorated function's
    signature is built from them (Typer reads ``__signature__``). ``extra``: command-line-only parameters,
    ``name -> (annotation, typer.Option(...))``, passed on as keywords. ``config``: add ``--config FILE``."""
    import typer

    plist = params(cls)
    extras = dict(extra or {})
    if config:
        extras = {"config": (Path | None, typer.Option(None, help=CONFIG_HELP)), **extras}
    arguments = [p for p in plist if p.spec.argument]
    sig_params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    annotations: dict[str, Any] = {"ctx": typer.Context}
    for p in arguments:
        sig_params.append(inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.info(),
                                            annotation=p.annotation))
        annotations[p.name] = p.annotation
    for name, (annotation, info) in extras.items():
        sig_params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=info,
                                            annotation=annotation))
        annotations[name] = annotation
    for p in plist:
        if not p.spec.argument:
            sig_params.append(inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.info(),
                                                annotation=p.annotation))
            annotations[p.name] = p.annotation

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(ctx: Any, **values: Any) -> Any:
            own = {name: values.pop(name) for name in list(extras) if name in values}
            given = {p.name for p in plist if _from_command_line(ctx, p.name)}
            file_values = read_config(own["config"]) if own.get("config") is not None else {}
            if not config:
                own.pop("config", None)
            cfg = build(cls, plist, values, given, file_values, own.get("config"))
            return fn(cfg, **{k: v for k, v in own.items() if k != "config"})

        run.__signature__ = inspect.Signature(sig_params)  # type: ignore[attr-defined]
        run.__annotations__ = annotations
        del run.__wrapped__  # Typer must read the signature above, not fn's
        return run

    return wrap


def _from_command_line(ctx: Any, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def build(cls: type, plist: list[Param], values: dict[str, Any], given: set[str], file_values: dict[str, Any],
          file: Path | None = None) -> Any:
    """The configuration: the file's values, then every flag given on the command line over them, then every other
    flag's default where the file is silent."""
    tree: dict[str, Any] = coerce(cls, file_values, str(file))
    for p in plist:
        node = tree
        for part in p.path[:-1]:
            node = node.setdefault(part, {})
        if p.name in given or p.path[-1] not in node:
            node[p.path[-1]] = p.to_field(values[p.name])
    return instantiate(cls, tree)


def instantiate(cls: type, tree: dict[str, Any]) -> Any:
    types_ = hints(cls)
    kwargs = {}
    for name, value in tree.items():
        inner = _dataclass_of(types_[name])
        kwargs[name] = instantiate(inner, value) if inner is not None and isinstance(value, dict) else value
    return cls(**kwargs)


def _dataclass_of(annotation: Any) -> type | None:
    return annotation if isinstance(annotation, type) and is_dataclass(annotation) else None


def coerce(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """A configuration file's values as ``cls``'s fields take them: paths as ``Path``, ints as floats where a float
    is due, lists as tuples where a tuple is; an unknown name is an error."""
    if not isinstance(values, dict):
        raise KdfastError(f"--config {where}: expected a mapping of option names to values")
    types_ = hints(cls)
    out = {}
    for name, value in values.items():
        key = str(name).replace("-", "_")
        if key not in types_:
            raise KdfastError(f"--config {where}: unknown option {name!r}; known: {', '.join(types_)}")
        inner = _dataclass_of(types_[key])
        if inner is not None:
            out[key] = coerce(inner, value, where)
            continue
        out[key] = _as(types_[key], value, f"--config {where}: {key}")
    return out


def _as(annotation: Any, value: Any, what: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in (a for a in typing.get_args(annotation) if a is not type(None)):
            try:
                return _as(arg, value, what)
            except KdfastError:
                continue
        raise KdfastError(f"{what}: {value!r} is not a {annotation}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise KdfastError(f"{what}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(annotation) or (Any,)
        items = [value_ if arg is Any else _as(arg, value_, what) for value_ in value]
        return tuple(items) if origin is tuple else items
    if annotation is Path:
        if isinstance(value, str | Path):
            return Path(value)
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is bool or annotation is str:
        if isinstance(value, annotation):
            return value
    else:
        return value
    raise KdfastError(f"{what}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


def read_config(path: Path) -> dict[str, Any]:
    """A YAML or TOML configuration file as a dict (sections for nested configurations)."""
    path = Path(path)
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise KdfastError(f"--config {path}: expected a .yaml, .yml or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise KdfastError(f"--config {path}: {first_line(e)}") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:
        raise KdfastError(f"--config {path}: not valid {path.suffix[1:].upper()} ({first_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KdfastError(f"--config {path}: expected a mapping of option names to values")
    return data


def plain(value: Any) -> Any:
    """A configuration as YAML can hold it: dataclasses as mappings, paths as strings, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def write_config(path: Path, cfg: Any) -> None:
    """``cfg`` resolved (a configuration, or a mapping of them), as the YAML file ``--config`` reads back; written
    atomically (:func:`kdfast.runs.write_text`)."""
    import yaml

    from kdfast.runs import write_text

    write_text(Path(path), yaml.safe_dump(plain(cfg), sort_keys=False, allow_unicode=True))
