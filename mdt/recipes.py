"""Recipes: the settings of a published run in a TOML file, for `mdt train --config` and `mdt sample --config`.

A recipe has a [train] table (TrainConfig fields, as `mdt train` flags with underscores) and a [sample] table
(`mdt sample` options: the paper's FID protocol). Its values become the defaults of the command, so flags
given on the command line still win. `--config NAME` takes a file path or the name of a shipped recipe
(mdt/recipes/NAME.toml; `mdt train --config list` lists them).
"""

from __future__ import annotations

import os
import sys

from .errors import InputError, MissingInputError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")


def shipped() -> list[str]:
    """Names of the recipes that come with mdt-kernels."""
    return sorted(f[:-5] for f in os.listdir(SHIPPED) if f.endswith(".toml"))


def recipe_path(spec: str) -> str:
    """A recipe file: `spec` itself, or the shipped recipe of that name."""
    if os.path.isfile(spec):
        return spec
    path = os.path.join(SHIPPED, f"{spec}.toml")
    if os.path.isfile(path):
        return path
    raise MissingInputError(f"no recipe {spec!r}: not a file, nor one of the shipped recipes ({', '.join(shipped())})")


def load_recipe(spec: str) -> dict:
    """The recipe's tables as a dict, e.g. {"description": ..., "train": {...}, "sample": {...}}."""
    path = recipe_path(spec)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"recipe {path!r} is not valid TOML ({e})") from e


def recipe_defaults(spec: str, table: str, parser) -> dict:
    """The [table] of a recipe as argparse defaults of `parser`: each key must be one of its options (by its
    destination name, with underscores); lists stay lists (nargs options)."""
    recipe = load_recipe(spec)
    values = recipe.get(table, {})
    if not isinstance(values, dict):
        raise InputError(f"recipe {spec!r}: [{table}] must be a table of options")
    known = {a.dest for a in parser._actions}
    unknown = sorted(k for k in values if k.replace("-", "_") not in known)
    if unknown:
        raise InputError(f"recipe {spec!r}: [{table}] has unknown option(s) {', '.join(unknown)}")
    return {k.replace("-", "_"): v for k, v in values.items()}


def to_toml(table: str, values: dict) -> str:
    """A flat [table] in TOML (None values as comments: TOML has no null)."""
    lines = [f"[{table}]"]
    for key, value in values.items():
        if value is None:
            lines.append(f"# {key} = (unset)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_config_arg(spec: str) -> None:
    """`--config list`: print the shipped recipes and stop."""
    if spec == "list":
        for name in shipped():
            print(f"{name}: {load_recipe(name).get('description', '')}")
        raise SystemExit(0)
    if not spec:
        raise UsageError("--config needs a recipe file or name")
