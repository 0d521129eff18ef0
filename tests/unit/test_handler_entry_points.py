"""Every handler module an archive names must load through TorchServe's own loader rule: exactly one class
defined in the module (ts.model_loader: "Expected only one class in custom service code"). A helper class
beside the handler makes every worker of the archive die at load, which the unit tests that build handlers
directly would never see."""

import importlib

import pytest

from ts.model_loader import TsModelLoader
from tskit.kinds import KINDS


@pytest.mark.parametrize("kind, handler_file", sorted((k.name, k.handler_file) for k in KINDS.values()))
def test_the_handler_module_is_a_torchserve_entry_point(kind, handler_file):
    module = importlib.import_module(handler_file.removesuffix(".py"))
    entry_point, initialize = TsModelLoader()._get_class_entry_point(module)
    assert getattr(entry_point, "__self__", None).__class__.kind == kind
    assert callable(initialize)
