"""The public surface: what ``__all__`` lists exists, is documented, and nothing else is exported."""

from __future__ import annotations

import importlib
import inspect

import pytest

import ferryman.http

MODULES = ["ferryman.http", "ferryman.http.auth", "ferryman.http.codecs", "ferryman.http.pagination",
           "ferryman.http.retry_after"]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist_and_are_documented(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__
    for member in module.__all__:
        obj = getattr(module, member)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name}.{member} has no docstring"


def test_package_exports_match_all() -> None:
    public = {
        name
        for name, value in vars(ferryman.http).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == set(ferryman.http.__all__)
