"""Resolve ``module:function`` strings from a config file into callables, with teaching errors.

The config file's folder is put first on ``sys.path``, so ``app = "task:client_fn"``
finds the ``task.py`` next to the config. A module of the same name imported
earlier from another folder (a second config in the same process) is dropped
from ``sys.modules`` so the file next to this config wins. Nothing is evaluated:
the string is split at ``:``, the module is imported and attributes are looked up.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedloom.errors import ConfigError, did_you_mean

__all__ = ["resolve_entry_point"]


def resolve_entry_point(
    spec: object, *, key: str, config_file: Path, num_args: int
) -> Callable[..., Any]:
    """The callable that ``"module:function"`` names, checked to accept `num_args` arguments.

    Args:
        spec: the value from the config, e.g. ``"task:client_fn"``.
        key: the TOML key path it came from, e.g. ``[clients].app``.
        config_file: the config file; its folder is searched first.
        num_args: how many positional arguments the callable will be given.

    Returns:
        The callable.

    Raises:
        ConfigError: `spec` is malformed, its module cannot be imported, the
            attribute is missing or not callable, or it takes other arguments.
    """
    where = f"{key} in {config_file}"
    module_name, _, attribute = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if (
        not isinstance(spec, str)
        or not module_name
        or not attribute
        or not _is_dotted_name(module_name, attribute)
    ):
        raise ConfigError(
            f"{where}: expected 'module:function' (e.g. \"task:client_fn\"), got {spec!r}. "
            "Name a module importable from the config's folder, a colon, and a function in it.",
            field=key,
            value=spec,
        )
    module = _import(module_name, where=where, key=key, folder=config_file.resolve().parent)
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            defined = sorted(
                name
                for name, value in vars(module).items()
                if callable(value)
                and not name.startswith("_")
                and getattr(value, "__module__", None) == module.__name__
            )
            raise ConfigError(
                f"{where}: module '{module_name}' ({getattr(module, '__file__', '?')}) has no "
                f"attribute '{attribute}'; its functions are: {', '.join(defined) or 'none'}."
                f"{did_you_mean(attribute, defined)} Fix the name after the colon.",
                field=key,
                value=spec,
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"{where}: '{spec}' is not callable (it is {type(target).__name__} {target!r}). "
            "Name a function (or other callable) after the colon.",
            field=key,
            value=spec,
        )
    _check_arity(target, num_args, where=where, key=key, spec=spec)
    return target  # type: ignore[no-any-return]


def _is_dotted_name(*names: str) -> bool:
    return all(part.isidentifier() for name in names for part in name.split("."))


def _import(module_name: str, *, where: str, key: str, folder: Path) -> Any:
    """Import `module_name` with `folder` first on sys.path."""
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    _drop_shadowed(module_name.split(".")[0], folder)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ConfigError(
                f"{where}: no module named '{module_name}' (searched {folder} first, then "
                "sys.path). Put the module next to the config file, or install it.",
                field=key,
                value=module_name,
            ) from exc
        raise ConfigError(
            f"{where}: importing module '{module_name}' failed: {exc}. "
            "Install the missing package in this environment.",
            field=key,
            value=module_name,
        ) from exc
    except Exception as exc:  # user code ran at import and failed; say so, keep the cause
        raise ConfigError(
            f"{where}: importing module '{module_name}' raised {type(exc).__name__}: {exc}. "
            "Fix the module so it imports cleanly (python -c 'import "
            f"{module_name}' from {folder} shows the traceback).",
            field=key,
            value=module_name,
        ) from exc


def _drop_shadowed(top_level: str, folder: Path) -> None:
    """Forget a cached `top_level` module from elsewhere when `folder` provides one."""
    cached = sys.modules.get(top_level)
    provides = (folder / f"{top_level}.py").is_file() or (folder / top_level).is_dir()
    origin = getattr(cached, "__file__", None)
    if cached is None or not provides or origin is None:
        return
    if Path(origin).resolve().is_relative_to(folder):
        return
    for name in [n for n in sys.modules if n == top_level or n.startswith(f"{top_level}.")]:
        del sys.modules[name]


def _check_arity(
    target: Callable[..., Any], num_args: int, *, where: str, key: str, spec: str
) -> None:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins have no signature; let the call decide
        return
    try:
        signature.bind(*([None] * num_args))
    except TypeError:
        raise ConfigError(
            f"{where}: '{spec}' has the signature {signature}, but it is called with "
            f"{num_args} positional argument{'s' if num_args != 1 else ''}. "
            "Change the function's parameters to match.",
            field=key,
            value=spec,
        ) from None
