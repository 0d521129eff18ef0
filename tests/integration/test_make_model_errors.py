"""`make model`'s error paths: each exits non-zero with a message naming the problem, and leaves no
declaration, archive or config.properties change behind. The sources are tests/own_models.py's random
ResNet-18 (.pt, .pt2, .onnx and its labels), made once for this module."""

import json
import os

import pytest

import own_models
from tskit.server import private_config

pytestmark = pytest.mark.heavy(seconds=20)  # seconds in a one-process run on 2 cores (tests/suite_order.py)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    image = own_models.make_image_classifier(str(tmp_path_factory.mktemp("error_sources")))
    return {"pt": image.pt, "pt2": image.pt2, "onnx": image.onnx, "labels": image.labels}


def failed_make(tmp_path, **kw):
    result, _ = own_models.make_model(str(tmp_path), **kw)
    assert result.returncode != 0
    return result.stdout + result.stderr


def test_aoti_from_an_onnx_source_is_refused_naming_the_formats_it_can_give(sources, tmp_path):
    out = failed_make(tmp_path, name="bad_format", kind="image-classifier", source=sources["onnx"],
                      model_format="aoti", labels=sources["labels"])
    assert "FORMAT=aoti" in out and "classifier.onnx can give onnx" in out, out
    assert not os.path.exists(tmp_path / "model_store" / "bad_format.mar")


def test_an_unknown_kind_is_refused_naming_the_known_ones(sources, tmp_path):
    out = failed_make(tmp_path, name="bad_kind", kind="speech-recognizer", source=sources["pt"])
    assert "KIND='speech-recognizer' is not one of" in out, out
    assert all(kind in out for kind in ("image-classifier", "text-classifier", "text-embedding")), out


def test_labels_of_the_wrong_length_are_refused_naming_the_file(sources, tmp_path):
    labels = tmp_path / "seven.json"
    labels.write_text(json.dumps(own_models.IMAGE_CLASSES[:7]))
    out = failed_make(tmp_path, name="bad_labels", kind="image-classifier", source=sources["onnx"],
                      model_format="onnx", labels=str(labels))
    # the labels are copied beside the declaration, models/bad_labels/labels.json: the file to edit
    declared_labels = os.path.join(str(tmp_path), "models", "bad_labels", "labels.json")
    assert f"{declared_labels} has 7 labels but the model gives 10 outputs" in out, out
    assert not os.path.exists(tmp_path / "model_store" / "bad_labels.mar")


def test_a_model_the_server_cannot_hold_is_refused_before_its_build_leaving_everything_as_it_was(sources, tmp_path):
    """A heap too small for even the least queues: `make model` names what to change, and the declaration,
    the archive and config.properties are as before."""
    base = str(tmp_path)
    config = os.path.join(base, "config.properties")
    private_config(base, model_store=os.path.join(base, "model_store"), vmargs="-Xmx64m")
    with open(config, encoding="utf-8") as f:
        before = f.read()
    out = failed_make(tmp_path, name="one_too_many", kind="image-classifier", source=sources["onnx"],
                      model_format="onnx", labels=sources["labels"], config=config)
    assert "raise -Xmx to at least 1g" in out and "lower max_request_size" in out, out
    assert not os.path.exists(os.path.join(base, "models", "one_too_many"))
    assert not os.path.exists(os.path.join(base, "model_store", "one_too_many.mar"))
    with open(config, encoding="utf-8") as f:
        assert f.read() == before


def test_a_missing_source_is_refused(tmp_path):
    missing = str(tmp_path / "nowhere" / "model.pt2")
    out = failed_make(tmp_path, name="no_source", kind="image-classifier", source=missing)
    assert f"SOURCE={missing} does not exist" in out, out
    out = failed_make(tmp_path, name="no_source", kind="image-classifier", source="")
    assert "usage: make model NAME=<name> KIND=<kind> SOURCE=<path>" in out, out

