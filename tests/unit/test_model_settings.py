"""Typed handler settings (handlers/model_settings.py): every mistake fails naming the key.

The last tests load the real mobilenet_v2 archive in the real handler class, with its model-config.yaml
edited: a worker must refuse to start (SettingsError) rather than answer 500s later.
"""

import json
import os

import pytest
import yaml

from handlers.image_classifier_handler import ImageClassifierHandler
from handlers.model_settings import (
    ImageClassifierSettings,
    SettingsError,
    TextClassifierSettings,
    TextEmbeddingSettings,
    check_labels,
)
from support import extract_archive, make_context
from tskit.kinds import parse_settings  # the kind's settings class, looked up by name

KINDS = ("image-classifier", "text-classifier", "text-embedding")


# ---- what is accepted ----------------------------------------------------------------------------
def test_an_empty_section_gives_the_defaults():
    image = parse_settings("image-classifier", None)
    assert isinstance(image, ImageClassifierSettings)
    assert (image.topk, image.resizeSize, image.cropSize, image.modelFormat) == (5, 256, 224, "torchscript")
    assert image.labelsFile == "index_to_name.json"
    assert isinstance(parse_settings("text-classifier", {}), TextClassifierSettings)
    embedding = parse_settings("text-embedding", {})
    assert isinstance(embedding, TextEmbeddingSettings) and embedding.labelsFile is None


def test_every_kind_has_budgets_with_defaults_per_kind():
    image, text = parse_settings("image-classifier", {}), parse_settings("text-embedding", {})
    assert (image.maxItemsPerRequest, image.maxPixelsPerRequest) == (32, image.maxImagePixels)
    assert (text.maxItemsPerRequest, text.maxTextChars) == (16, 100_000)
    assert image.maxResponseBytes == text.maxResponseBytes == 6_553_500  # TorchServe's max_response_size


def test_values_of_the_right_type_are_taken():
    settings = parse_settings("image-classifier", {"topk": 3, "mean": [0, 0.5, 1], "std": [1, 1, 1],
                                                   "reducedJpegDecode": False, "modelFormat": "aoti"})
    assert settings.topk == 3 and settings.reducedJpegDecode is False and settings.modelFormat == "aoti"
    assert settings.mean == [0.0, 0.5, 1.0] and all(isinstance(v, float) for v in settings.mean)
    text = parse_settings("text-classifier", {"topk": None, "maxTokens": 128, "padToken": "<pad>"})
    assert text.topk is None and text.maxTokens == 128 and text.padToken == "<pad>"


# ---- misspelt keys -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, key", [
    ("image-classifier", "topK"),
    ("image-classifier", "resize_size"),
    ("text-classifier", "max_tokens"),
    ("text-embedding", "topk"),          # a classifier's setting, not an embedding's
    ("image-classifier", "maxTokens"),   # a text setting, not an image one
    ("text-embedding", "maxItemPerRequest"),   # the budgets: a misspelt one fails the load too
    ("text-classifier", "maxTextCharacters"),
    ("image-classifier", "maxTextChars"),      # a text budget, not an image one
    ("text-embedding", "maxPixelsPerRequest"),  # an image budget, not a text one
])
def test_a_misspelt_or_foreign_key_fails_naming_it(kind, key):
    with pytest.raises(SettingsError, match=rf"handler\.{key} is not a setting of a {kind}") as err:
        parse_settings(kind, {key: 1})
    assert "known:" in str(err.value)  # and lists what it knows


def test_an_unknown_kind_fails_naming_the_kinds():
    with pytest.raises(SettingsError, match="kind 'speech-recognizer' is not one of image-classifier"):
        parse_settings("speech-recognizer", {})


# ---- wrong types ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, key, value, expected", [
    ("image-classifier", "topk", "5", "int"),             # a string for an int
    ("image-classifier", "topk", True, "int"),            # a bool is not an int
    ("image-classifier", "intraOpThreads", False, "int"),
    ("image-classifier", "cropSize", 224.0, "int"),       # a float is not an int
    ("image-classifier", "reducedJpegDecode", "yes", "bool"),
    ("image-classifier", "reducedJpegDecode", 1, "bool"),  # an int is not a bool
    ("image-classifier", "modelFormat", 3, "str"),
    ("text-classifier", "topk", "all", "int"),            # Optional[int]: None or an int
    ("text-embedding", "maxTokens", "256", "int"),
    ("text-embedding", "padToken", 0, "str"),
    ("text-embedding", "maxTextChars", "100k", "int"),
    ("image-classifier", "maxPixelsPerRequest", 4e7, "int"),
    ("text-classifier", "maxItemsPerRequest", True, "int"),
])
def test_a_value_of_the_wrong_type_fails_naming_the_key(kind, key, value, expected):
    with pytest.raises(SettingsError, match=rf"handler\.{key}: expected {expected}, got {value!r}"):
        parse_settings(kind, {key: value})


@pytest.mark.parametrize("value", [[0.5, 0.5, "0.5"], [True, 0.5, 0.5], "0.5,0.5,0.5", 0.5])
def test_mean_must_be_a_list_of_numbers(value):
    with pytest.raises(SettingsError, match=r"handler\.mean: expected a list of numbers"):
        parse_settings("image-classifier", {"mean": value})


# ---- out of range --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, section, message", [
    ("image-classifier", {"topk": 0}, r"handler\.topk: must be >= 1, got 0"),
    ("image-classifier", {"cropSize": 0, "resizeSize": 0}, r"handler\.cropSize: must be >= 1"),
    ("image-classifier", {"maxImagePixels": -1}, r"handler\.maxImagePixels: must be >= 1"),
    ("image-classifier", {"intraOpThreads": 0}, r"handler\.intraOpThreads: must be >= 1"),
    ("image-classifier", {"warmUpRuns": -1}, r"handler\.warmUpRuns: must be >= 0"),
    ("image-classifier", {"resizeSize": 200}, r"handler\.resizeSize \(200\) must be >= handler\.cropSize \(224\)"),
    ("image-classifier", {"mean": [0.5, 0.5]}, r"handler\.mean: needs 3 values"),
    ("image-classifier", {"std": [0.2, 0.0, 0.2]}, r"handler\.std: every value must be > 0"),
    ("image-classifier", {"modelFormat": "tensorrt"}, r"handler\.modelFormat: 'tensorrt' is not one of torchscript, aoti, onnx"),
    ("text-classifier", {"maxTokens": 0}, r"handler\.maxTokens: must be >= 1"),
    ("text-classifier", {"topk": 0}, r"handler\.topk: must be >= 1"),
    ("text-embedding", {"intraOpThreads": -2}, r"handler\.intraOpThreads: must be >= 1"),
    ("text-embedding", {"maxItemsPerRequest": 0}, r"handler\.maxItemsPerRequest: must be >= 1"),
    ("text-embedding", {"maxTextChars": 0}, r"handler\.maxTextChars: must be >= 1"),
    ("text-classifier", {"maxResponseBytes": 100}, r"handler\.maxResponseBytes: must be >= 1024"),
    ("image-classifier", {"maxPixelsPerRequest": 1000},
     r"handler\.maxPixelsPerRequest \(1000\) must be >= handler\.maxImagePixels \(40000000\)"),
])
def test_a_value_out_of_range_fails_naming_the_key(kind, section, message):
    with pytest.raises(SettingsError, match=message):
        parse_settings(kind, section)


def test_check_labels_names_the_file_and_both_counts():
    check_labels(["a", "b"], 2, "labels.json")
    with pytest.raises(SettingsError, match=r"my_labels\.json has 3 labels but the model gives 2 outputs"):
        check_labels(["a", "b", "c"], 2, "my_labels.json")


# ---- in a worker: the real handler on an archive whose model-config.yaml is edited ------------------
@pytest.fixture()
def mobilenet_archive(tmp_path):
    return extract_archive("mobilenet_v2.mar", str(tmp_path / "mobilenet_v2"))


def edited(archive, **handler_changes):
    """The archive's model-config.yaml with its handler section changed, written back; the new config."""
    model_dir, manifest, model_config = archive
    model_config = dict(model_config, handler=dict(model_config.get("handler") or {}, **handler_changes))
    with open(os.path.join(model_dir, manifest["model"]["configFile"]), "w", encoding="utf-8") as f:
        yaml.safe_dump(model_config, f)
    return model_dir, manifest, model_config


def test_a_worker_refuses_labels_of_the_wrong_length_naming_the_file(mobilenet_archive):
    model_dir = mobilenet_archive[0]
    with open(os.path.join(model_dir, "short_labels.json"), "w", encoding="utf-8") as f:
        json.dump({str(i): f"class {i}" for i in range(999)}, f)
    archive = edited(mobilenet_archive, labelsFile="short_labels.json", warmUpRuns=0)
    with pytest.raises(SettingsError, match=r"short_labels\.json has 999 labels but the model gives 1000 outputs"):
        ImageClassifierHandler().initialize(make_context(*archive))


def test_a_worker_refuses_a_misspelt_key_in_model_config(mobilenet_archive):
    archive = edited(mobilenet_archive, topK=3)
    with pytest.raises(SettingsError, match=r"handler\.topK is not a setting of a image-classifier"):
        ImageClassifierHandler().initialize(make_context(*archive))


def test_the_unedited_archive_loads(mobilenet_archive):
    handler = ImageClassifierHandler()
    handler.initialize(make_context(*edited(mobilenet_archive, warmUpRuns=0)))
    assert handler.initialized and len(handler.labels) == 1000
