"""Model declarations (scripts/tskit/declaration.py, declare.py): models/<name>/model.yaml, checked on load.

A declaration with a key nobody reads would be a silent no-op: unknown keys, at the top level, under
`torchserve:` and under `handler:`, fail naming the file and the key. No model is built here.
"""

import json
import os

import pytest

from tskit import declaration as declarations
from tskit.declaration import DeclarationError, as_document, declared, load, served
from tskit.declare import declare

BUNDLED_SERVED = {"mobilenet_v2", "minilm_embedding", "minilm_topics"}

VALID = """\
kind: image-classifier
source: model.pt2
format: aoti
precision: fp32
version: 2
serve: true
torchserve:
  minWorkers: 1
  maxWorkers: 2
  batchSize: 4
  deviceType: cpu
handler:
  topk: 3
"""


def write(models_dir, name, text):
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(text, encoding="utf-8")
    return str(folder / "model.yaml")


# ---- the bundled models ----------------------------------------------------------------------------
def test_declared_lists_every_bundled_model():
    names = [d.name for d in declared()]
    assert names == sorted(names)
    assert BUNDLED_SERVED | {"minilm_topics_int8"} <= set(names)


def test_served_lists_the_three_and_not_the_int8_variant():
    names = {d.name for d in served()}
    assert BUNDLED_SERVED <= names
    assert "minilm_topics_int8" not in names
    int8 = load("minilm_topics_int8")
    assert int8.serve is False and int8.precision == "int8" and int8.kind == "text-classifier"


def test_bundled_declarations_are_complete():
    kinds = {d.name: d.kind for d in declared()}
    assert kinds["mobilenet_v2"] == "image-classifier"
    assert kinds["minilm_embedding"] == "text-embedding"
    assert kinds["minilm_topics"] == "text-classifier"
    for d in declared():
        assert d.handler_file.endswith("_handler.py")
        assert d.settings().modelFormat == d.format
        assert set(d.registration()) <= set(declarations.REGISTRATION_KEYS)
    assert declarations.of_kind("image-classifier") == ["mobilenet_v2"]


# ---- a valid declaration -----------------------------------------------------------------------------
def test_a_valid_declaration_loads_typed(tmp_path):
    write(tmp_path, "mine", VALID)
    d = load("mine", str(tmp_path))
    assert (d.kind, d.format, d.version, d.serve) == ("image-classifier", "aoti", "2", True)
    assert d.resolve(d.source) == str(tmp_path / "mine" / "model.pt2")  # relative to the declaration
    assert d.resolve("/abs/model.pt") == "/abs/model.pt"
    assert d.settings().topk == 3 and d.settings().modelFormat == "aoti"
    assert d.registration() == {"minWorkers": 1, "maxWorkers": 2, "batchSize": 4}
    assert as_document(d)["handler"] == {"topk": 3} and "labels" not in as_document(d)
    assert [x.name for x in declared(str(tmp_path))] == ["mine"] == [x.name for x in served(str(tmp_path))]


def test_serve_false_is_declared_but_not_served(tmp_path):
    write(tmp_path, "a", VALID)
    write(tmp_path, "b", VALID.replace("serve: true", "serve: false"))
    (tmp_path / "not_a_model").mkdir()  # a folder without model.yaml is not a declaration
    assert [d.name for d in declared(str(tmp_path))] == ["a", "b"]
    assert [d.name for d in served(str(tmp_path))] == ["a"]


def test_no_models_folder_means_no_declarations(tmp_path):
    assert declared(str(tmp_path / "absent")) == [] == served(str(tmp_path / "absent"))


# ---- mistakes fail naming the file and the key ----------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (("precision: fp32", "precison: fp32"), r"unknown key\(s\) precison"),
    (("serve: true", "serve: true\nworkers: 2"), r"unknown key\(s\) workers"),
    (("  minWorkers: 1", "  minWorker: 1"), r"torchserve\.minWorker is not a TorchServe model setting"),
    (("  deviceType: cpu", "  deviceType: cpu\n  batch_size: 8"), r"torchserve\.batch_size is not a TorchServe"),
    (("  batchSize: 4", "  batchSize: '4'"), r"torchserve\.batchSize: expected int, got '4'"),
    (("  batchSize: 4", "  batchSize: true"), r"torchserve\.batchSize: expected int, got True"),
    (("  topk: 3", "  top_k: 3"), r"handler\.top_k is not a setting of a image-classifier"),
    (("  topk: 3", "  topk: three"), r"handler\.topk: expected int, got 'three'"),
    (("  topk: 3", "  topk: 0"), r"handler\.topk: must be >= 1"),
    (("kind: image-classifier", "kind: speech-recognizer"), r"kind 'speech-recognizer' is not one of"),
    (("format: aoti", "format: tensorrt"), r"format 'tensorrt' is not one of torchscript, aoti, onnx"),
    (("precision: fp32", "precision: fp16"), r"precision 'fp16' is not one of fp32, int8, bf16$"),
    (("source: model.pt2\n", ""), r"`source` is missing"),
])
def test_a_mistake_fails_naming_the_file_and_the_key(tmp_path, edit, message):
    old, new = edit
    assert old in VALID
    path = write(tmp_path, "mine", VALID.replace(old, new, 1))
    with pytest.raises(DeclarationError, match=message) as err:
        load("mine", str(tmp_path))
    assert str(err.value).startswith(path)


def test_every_precision_tskit_makes_validates(tmp_path):
    for precision in ("fp32", "int8", "bf16"):
        write(tmp_path, "mine", VALID.replace("precision: fp32", f"precision: {precision}"))
        assert load("mine", str(tmp_path)).precision == precision


def test_a_declaration_that_is_not_a_mapping_fails(tmp_path):
    path = write(tmp_path, "mine", "- kind\n- source\n")
    with pytest.raises(DeclarationError, match="expected a mapping of keys, got list") as err:
        load("mine", str(tmp_path))
    assert path in str(err.value)


def test_an_undeclared_model_says_how_to_declare_it(tmp_path):
    with pytest.raises(DeclarationError, match=r"does not exist: declare the model with `make model NAME=ghost"):
        load("ghost", str(tmp_path))


def test_one_bad_declaration_fails_the_listing(tmp_path):
    write(tmp_path, "good", VALID)
    write(tmp_path, "bad", VALID.replace("serve: true", "serve: true\nlables: x.json"))
    with pytest.raises(DeclarationError, match=r"bad/model.yaml: unknown key\(s\) lables"):
        declared(str(tmp_path))


# ---- declare(): what `make model` writes ---------------------------------------------------------------
def test_declare_writes_a_declaration_that_loads_back(tmp_path):
    source = tmp_path / "my model.onnx"
    source.write_bytes(b"not checked before the build")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["cat", "dog"]))
    path = declare("pets", "image-classifier", str(source), str(labels), models_dir=str(tmp_path / "models"))
    d = load("pets", str(tmp_path / "models"))
    assert path == d.path
    assert (d.kind, d.source, d.format, d.labels) == ("image-classifier", str(source), "onnx", "labels.json")
    assert json.loads((tmp_path / "models" / "pets" / "labels.json").read_text()) == ["cat", "dog"]
    assert d.settings().topk == 5 and d.torchserve["maxWorkers"] == 1
    with pytest.raises(DeclarationError, match=r"exists: edit it and run `make archives`, or add FORCE=1"):
        declare("pets", "image-classifier", str(source), models_dir=str(tmp_path / "models"))
    declare("pets", "image-classifier", str(source), force=True, models_dir=str(tmp_path / "models"))


@pytest.mark.parametrize("name, kind, source, model_format, message", [
    ("x", "image-classifier", "m.onnx", "aoti", r"FORMAT=aoti: m\.onnx can give onnx"),
    ("x", "image-classifier", "m.pt", "aoti", r"FORMAT=aoti: m\.pt can give torchscript, onnx"),
    ("x", "speech", "m.pt", None, r"KIND='speech' is not one of image-classifier, text-classifier, text-embedding"),
    ("x", "image-classifier", "m.tflite", None, r"expected a \.pt, \.pt2 or \.onnx file"),
    ("2fast", "image-classifier", "m.pt", None, r"NAME='2fast': use letters, digits"),
    ("x", "image-classifier", "missing.pt", None, r"SOURCE=.*missing\.pt does not exist"),
])
def test_declare_refuses_naming_the_problem(tmp_path, name, kind, source, model_format, message):
    for existing in ("m.onnx", "m.pt", "m.tflite"):
        (tmp_path / existing).write_bytes(b"")
    with pytest.raises(DeclarationError, match=message):
        declare(name, kind, str(tmp_path / source), model_format=model_format, models_dir=str(tmp_path / "models"))
    assert not (tmp_path / "models" / name / "model.yaml").exists()


def test_declare_refuses_labels_that_are_not_json(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"")
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(DeclarationError, match=r"LABELS=.*labels\.txt is not a UTF-8 JSON file"):
        declare("x", "image-classifier", str(tmp_path / "m.pt"), str(tmp_path / "labels.txt"),
                models_dir=str(tmp_path / "models"))


def test_repo_models_folder_is_the_default():
    assert declarations.MODELS_DIR == os.path.join(declarations.REPO, "models")
