"""Optional C extensions for the parsers' hot paths (plain CPython C-API, no third-party code).

* ``_hqfast.c``: Hyperquack parse + classify (used by
  :class:`~services.beam_launcher.hyperquack.processing.HyperquackProcessor`);
* ``_satfast.c``: Satellite v2.2 ``results.json`` flattening (used by
  :mod:`services.beam_launcher.satellite.batch`).

Build them with ``python -m services.beam_launcher.native.build`` (``make env`` does). The
pure-Python code stays the reference; without a built module, or with
``CP_NATIVE_PARSER=0``, it is what runs.

Example:
    >>> import os
    >>> os.environ["CP_NATIVE_PARSER"] = "0"
    >>> status()
    {'hyperquack': False, 'satellite': False}
    >>> del os.environ["CP_NATIVE_PARSER"]
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

#: Environment variable: ``0`` turns every C path off.
NATIVE_ENV = "CP_NATIVE_PARSER"
MODULES = {"hyperquack": "_hqfast", "satellite": "_satfast"}


def enabled() -> bool:
    """False when ``$CP_NATIVE_PARSER`` is ``0``."""
    return os.environ.get(NATIVE_ENV, "").strip() != "0"


def load(name: str = "_hqfast") -> ModuleType | None:
    """The compiled module ``name``, or None when it cannot be imported (not built)."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None


def status() -> dict[str, bool]:
    """Which parsers would take their C path now (built and enabled)."""
    return {family: enabled() and load(mod) is not None for family, mod in MODULES.items()}
