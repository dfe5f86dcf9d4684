"""Load a user's Python object from a reference: the one loader behind ``--factory`` (model
sources) and ``--embedder py:…`` (embedder plug-ins).

Two forms, split at the last ``:``:

- ``package.module:name`` — imported like ``python -m`` would: the current directory is put
  first on ``sys.path`` for the import, so a ``mymodels.py`` (or package) in the directory the
  command runs from is found, as is anything installed;
- ``path/to/file.py:name`` — the file is loaded as a module (relative paths from the current
  directory); its own folder is on ``sys.path`` while it loads, so it can import its neighbours.
  A reference whose module part ends in ``.py`` or contains a path separator is a file.

``name`` may be dotted (``module:Class.method``). Every failure is an ``InvalidArgument`` naming
the reference and the ``field`` it came from.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from neuronatlas.core.errors import InvalidArgument

FORMS = "package.module:name or path/to/file.py:name"


def split_ref(ref: str) -> tuple[str, str]:
    """``(module or file, attribute)``; raises InvalidArgument if either part is missing."""
    mod, sep, attr = str(ref).rpartition(":")
    if not sep or not mod or not attr:
        raise InvalidArgument(f"{ref!r} must look like {FORMS}", field="factory")
    return mod, attr


def is_file_ref(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part or os.sep in module_part


def absolute_ref(ref: str) -> str:
    """A file reference with its path made absolute (module references unchanged), so a
    stored reference works from any directory."""
    try:
        mod, attr = split_ref(ref)
    except InvalidArgument:
        return ref
    if not is_file_ref(mod):
        return ref
    return f"{Path(mod).expanduser().resolve()}:{attr}"


@contextmanager
def _on_path(folder: str) -> Iterator[None]:
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass


def _load_file(path_s: str, field: str, ref: str) -> ModuleType:
    path = Path(path_s).expanduser().resolve()
    if not path.is_file():
        raise InvalidArgument(f"cannot load {ref!r}: file {path} does not exist", field=field)
    # a stable, unique module name per file, so two files called model.py do not collide
    name = f"_neuronatlas_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"cannot load {ref!r}: {path} is not a Python file", field=field)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        with _on_path(str(path.parent)):
            spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the user's file raises while loading
        sys.modules.pop(name, None)
        raise InvalidArgument(
            f"cannot load {ref!r}: {path.name} raised {type(e).__name__}: {e}", field=field
        ) from None
    return module


def _import_module(mod: str, field: str, ref: str) -> ModuleType:
    try:
        with _on_path(os.getcwd()):
            return importlib.import_module(mod)
    except ImportError as e:
        raise InvalidArgument(
            f"cannot import {ref!r}: {e} (modules are searched in the current directory "
            f"and the installed packages; a file can be given as path/to/file.py:name)",
            field=field,
        ) from None
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises on import
        raise InvalidArgument(
            f"cannot import {ref!r}: importing {mod} raised {type(e).__name__}: {e}", field=field
        ) from None


def load_object(ref: str, *, field: str = "factory", usage: str = FORMS) -> Any:
    """The object ``ref`` names (see the module docstring for the two forms). ``usage`` is
    how the caller spells the two forms in the message for a malformed reference."""
    try:
        mod, attr = split_ref(ref)
    except InvalidArgument:
        raise InvalidArgument(f"{ref!r} must look like {usage}", field=field) from None
    module = _load_file(mod, field, ref) if is_file_ref(mod) else _import_module(mod, field, ref)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidArgument(
                f"cannot load {ref!r}: {mod} has no attribute {attr!r}",
                field=field,
            )
        obj = getattr(obj, part)
    return obj
