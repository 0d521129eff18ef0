"""The model kinds (scripts/tskit/kinds/): each kind's module is complete and agrees with its runtime handler,
an unknown kind is a clear error, and no other tool or runtime module keeps its own table of kinds.

The one place a kind's name may be written outside its module is the runtime: each handler entry class
says `kind = "<name>"` (handlers/ cannot import the tools, and the name is in its settings errors), and
test_the_handler_class_names_its_kind_and_settings holds it to the kind module's.
"""

import ast
import importlib
import os

import pytest
import yaml

from benchkit.optimize_choice import BAR_OF_METRIC
from benchkit.workloads import make_inputs
from handlers.model_settings import FORMATS, SettingsError
from support import REPO
from tskit import kinds
from tskit.declaration import DeclarationError
from tskit.declare import declare
from tskit.kinds import KINDS, Kind, UnknownKind

HANDLERS = os.path.join(REPO, "handlers")
KIND_MODULES = os.path.join(REPO, "scripts", "tskit", "kinds")
ALL = sorted(KINDS)


def test_every_kind_module_is_registered():
    assert all(isinstance(k, Kind) and KINDS[k.name] is k for k in KINDS.values())
    # besides the kinds: the package, the text kinds' shared template, the input and answer forms
    modules = {f for f in os.listdir(KIND_MODULES) if f.endswith(".py")} - {"__init__.py", "text.py", "inputs.py",
                                                                           "answers.py"}
    assert {name.replace("-", "_") + ".py" for name in KINDS} == modules  # every kind module is registered


@pytest.mark.parametrize("name", ALL)
def test_the_handler_file_is_an_entry_module_of_one_class(name):
    path = os.path.join(HANDLERS, kinds.kind(name).handler_file)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    assert len([n for n in tree.body if isinstance(n, ast.ClassDef)]) == 1, path


@pytest.mark.parametrize("name", ALL)
def test_the_handler_class_names_its_kind_and_settings(name):
    k = kinds.kind(name)
    module = importlib.import_module(k.handler_module)
    (handler,) = [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__]
    assert handler.kind == k.name
    assert handler.settings_class is k.settings
    assert tuple(output.name for output in handler.outputs) == k.v2_outputs


@pytest.mark.parametrize("name", ALL)
def test_make_model_writes_a_declaration_the_settings_class_reads(name, tmp_path):
    """`make model`'s own code path: the kind's template becomes the declaration's `handler:` section,
    read back (declare loads it) as the kind's settings class."""
    source = tmp_path / ("m.gguf" if kinds.kind(name).model_input.builds_folder else "m.pt")
    source.write_bytes(b"not loaded: make model judges a source by its name")
    path = declare("m", name, str(source), models_dir=str(tmp_path / "models"))
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    k = kinds.kind(name)
    assert document["kind"] == name and document["torchserve"]["maxBatchDelay"] == k.max_batch_delay
    assert document["handler"] == yaml.safe_load(k.template)
    settings = k.parse_settings(document["handler"])
    assert type(settings) is k.settings
    for key, value in document["handler"].items():
        assert getattr(settings, key) == value, key


def test_the_bench_inputs_and_measures_exist(tmp_path):
    inputs = make_inputs(str(tmp_path))
    for k in KINDS.values():
        assert k.int8_format is None or k.int8_format in FORMATS, k.name
        # bf16 is made by PyTorch: ONNX Runtime's CPU has no bf16 kernels to serve it with
        assert set(k.bf16_formats) <= {"torchscript", "aoti"}, k.name
        openvino = {p: ("openvino",) if p in k.openvino_precisions else () for p in ("bf16", "int8")}
        assert set(k.openvino_precisions) <= {"bf16", "int8"}, k.name  # made as the IR is written
        assert k.precision_formats("fp32") == () and k.precision_formats("bf16") == k.bf16_formats + openvino["bf16"]
        assert k.precision_formats("int8") == ((k.int8_format,) if k.int8_format else ()) + openvino["int8"]
        if k.bench_workload:
            assert k.bench_workload in inputs, k.name
        if k.agreement_metric:
            assert k.agreement_metric == k.answer.metric and k.agreement_metric in BAR_OF_METRIC, k.name


def test_an_unknown_kind_is_a_clear_error(tmp_path):
    known = ", ".join(KINDS)  # in the order _registered() gives
    with pytest.raises(UnknownKind, match=f"kind 'speech' is not one of {known}"):
        kinds.kind("speech")
    with pytest.raises(SettingsError, match="kind 'speech' is not one of"):  # where settings errors are caught
        kinds.parse_settings("speech", {})
    with pytest.raises(UnknownKind, match="handler speech_handler.py serves none of the kinds"):
        kinds.of_handler("speech_handler.py:handle")
    (tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(DeclarationError, match=f"KIND='speech' is not one of {known}"):
        declare("m", "speech", str(tmp_path / "m.pt"), models_dir=str(tmp_path / "models"))


def _python_files():
    for top in ("scripts", "handlers"):
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            yield from (os.path.join(folder, f) for f in files if f.endswith(".py"))


def _allowed(path: str, node: ast.Constant, lines) -> bool:
    if os.path.dirname(path) == KIND_MODULES:
        return True
    # a handler class's own `kind = "<name>"` (see the module docstring)
    return path.endswith("_handler.py") and lines[node.lineno - 1].strip() == f'kind = "{node.value}"'


def test_kind_names_and_handler_files_are_written_only_in_the_kind_modules():
    """A kind's name (or its handler file) as a string of its own anywhere else in scripts/ or handlers/ is a
    second table of kinds or a comparison with one kind: either belongs on the kind's module. Prose (a
    docstring, a message) may name a kind; the declarations, docs and tests are outside this check."""
    names = set(KINDS) | {k.handler_file for k in KINDS.values()}
    found = []
    for path in _python_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and node.value in names and not _allowed(path, node, lines):
                found.append(f"{os.path.relpath(path, REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "look the kind up in tskit.kinds instead:\n" + "\n".join(found)


def _is_form_name(node) -> bool:
    """`<x>.model_input.name` or `<x>.answer.name`: a kind's input or answer form by its name."""
    return (isinstance(node, ast.Attribute) and node.attr == "name" and isinstance(node.value, ast.Attribute)
            and node.value.attr in ("model_input", "answer"))


def test_no_tool_branches_on_a_kinds_input_or_answer_form():
    """What differs between forms is a method or an attribute of the form's object (kinds/inputs.py,
    kinds/answers.py); a comparison with a form's name outside them would be a second place to edit."""
    found = []
    for path in _python_files():
        if os.path.dirname(path) == KIND_MODULES:
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(map(_is_form_name, [node.left, *node.comparators])):
                found.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
    assert not hasattr(Kind, "family") and not found, "ask the kind's model_input or answer instead:\n" + "\n".join(found)
