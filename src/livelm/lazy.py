"""Package names that import their module when first used (PEP 562).

A package's `__init__` imports its light modules as usual and hands the names of its heavy ones
(torch, transformers, FastAPI) to `lazy_names`, so that importing the package, or a light module
of it such as a config, does not import those: a command's parser, and so its `--help`, needs
only the configs.

    __getattr__ = lazy_names(__name__, {"livelm.model.loading": ("load_model",)})

Type checkers see the same names through the package's `if TYPE_CHECKING:` imports.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence


def lazy_names(package: str, modules: Mapping[str, Sequence[str]]) -> Callable[[str], object]:
    """The `__getattr__` of `package`: a name listed under a module is imported from it when the
    package is first asked for it, and kept on the package from then on."""
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        module = home.get(name)
        if module is None:  # also how `from package import submodule` finds a submodule
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
