"""The packages that load torch-heavy names on first use (`livelm.lazy`) still offer every name
they export, and only those."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["livelm.learner", "livelm.model", "livelm.policy", "livelm.server", "livelm.store"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        getattr(module, name)  # an AttributeError names a lazy name without its module
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018


def test_a_submodule_imports_by_name() -> None:
    from livelm.model import loading

    assert loading.load_model is importlib.import_module("livelm.model").load_model
