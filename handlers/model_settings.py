"""Typed handler settings, one class per model kind, checked when a worker loads (and when an archive is built).

The `handler:` section of a model's model-config.yaml is read into one of these dataclasses. A key the
kind does not know, a value of the wrong type or out of range fails with `SettingsError` naming the key
(in the shape of Triton's validated config.pbtxt and KServe's typed errors): the worker does not load,
so the mistake shows at registration instead of as a 500 on the first request.
Pure: imports nothing from `ts`; the archive builder (scripts/tskit) uses the same classes.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional, Type

# transformers: a Hugging Face folder, run eagerly (a text generator's)
FORMATS = ("torchscript", "aoti", "onnx", "openvino", "transformers")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the key and what it accepts."""


@dataclass
class CommonSettings:
    modelFormat: str = "torchscript"   # how the serialized file is run: torchscript | aoti | onnx | openvino
    intraOpThreads: int = 1            # workers x threads <= cores (two OpenMP threads collapse on a busy core)
    optimizeForInference: bool = True  # TorchScript only: freeze + optimize_for_inference at load time
    warmUpRuns: int = 2
    labelsFile: Optional[str] = None   # index_to_name.json in the archive (classifiers)
    # Per-request budgets (413 before the heavy work; docs/limits-and-overload.md gives the arithmetic)
    maxItemsPerRequest: int = 16       # KServe v1 instances / v2 data elements in one request
    maxResponseBytes: int = 6_553_500  # TorchServe's max_response_size: no answer may be larger
    # A request stamped X-Request-Start that waited longer than this is answered 503 without the model
    # (request_deadline); 0: only a request's own X-Request-Timeout-Ms sets its patience
    maxQueueMs: int = 0
    # Response cache per worker (response_cache): off unless cacheEntries > 0
    cacheEntries: int = 0              # answers kept (least recently used go first)
    cacheBytes: int = 64 * 1024 * 1024 # and at most this many bytes of stored JSON answers
    # torch.profiler over the next N batches of each worker (make profile): off at 0
    profileBatches: int = 0
    profileDir: Optional[str] = None   # default: $LOG_LOCATION/profiles (logs/profiles)
    # Written by the archive builder for aoti (cpu_requirements): the /proc/cpuinfo flags its compiled kernels
    # use and the vector ISA they were built for; a CPU without them refuses to load instead of dying of SIGILL
    requiredCpuFlags: List[str] = field(default_factory=list)
    builtForIsa: Optional[str] = None

    def check(self) -> None:
        if self.modelFormat not in FORMATS:
            raise SettingsError(f"handler.modelFormat: {self.modelFormat!r} is not one of {', '.join(FORMATS)}")
        _at_least("intraOpThreads", self.intraOpThreads, 1)
        _at_least("warmUpRuns", self.warmUpRuns, 0)
        _at_least("maxItemsPerRequest", self.maxItemsPerRequest, 1)
        _at_least("maxResponseBytes", self.maxResponseBytes, 1024)
        _at_least("maxQueueMs", self.maxQueueMs, 0)
        _at_least("cacheEntries", self.cacheEntries, 0)
        _at_least("cacheBytes", self.cacheBytes, 1024)
        _at_least("profileBatches", self.profileBatches, 0)


@dataclass
class ImageSettings(CommonSettings):
    """What every image kind shares: a video's budgets (video.py), each checked from its header before any frame
    is decoded (413) and again while decoding (an `error` line ends the stream)."""
    maxVideoSeconds: float = 600.0       # a video's duration
    maxVideoFrames: int = 3600           # frames answered for one video (sample_fps x seconds, or max_frames)
    maxFramePixels: int = 8_294_400      # width x height of a frame (3840 x 2160)
    maxVideoDecodedBytes: int = 16 * 2**30  # every frame decoded (answered or skipped) as RGB, width x height x 3
    videoFramesPerStep: int = 8          # frames of the running videos in one step (one forward pass), >= 1 each

    def check(self) -> None:
        super().check()
        for key in ("maxVideoSeconds", "maxVideoFrames", "maxFramePixels", "maxVideoDecodedBytes",
                    "videoFramesPerStep"):
            _at_least(key, getattr(self, key), 1)


@dataclass
class ImageClassifierSettings(ImageSettings):
    labelsFile: Optional[str] = "index_to_name.json"
    topk: int = 5                        # predictions per answer (capped at the number of classes)
    maxImagePixels: int = 40_000_000     # declared width*height above this answers 413 before decoding
    maxItemsPerRequest: int = 32         # images per KServe request
    maxPixelsPerRequest: int = 40_000_000  # declared pixels of all the images of one request, before decoding
    reducedJpegDecode: bool = True       # large JPEGs decode at 1/2..1/8 scale, never below resizeSize
    resizeSize: int = 256                # torchvision's ImageNet reference transforms
    cropSize: int = 224
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    @property
    def input_size(self) -> int:
        """The side of the model's square input (the exporters' sample batch)."""
        return self.cropSize

    def check(self) -> None:
        super().check()
        for key in ("topk", "maxImagePixels", "cropSize"):
            _at_least(key, getattr(self, key), 1)
        check_pixel_budgets(self.maxImagePixels, self.maxPixelsPerRequest)
        if self.resizeSize < self.cropSize:
            raise SettingsError(f"handler.resizeSize ({self.resizeSize}) must be >= handler.cropSize ({self.cropSize})")
        check_mean_std(self.mean, self.std)


@dataclass
class TextSettings(CommonSettings):
    maxTokens: int = 256                 # longer texts are cut and answer "truncated": true
    tokenizerFile: str = "tokenizer.json"
    padToken: str = "[PAD]"
    bucketOverheadTokens: int = 32       # per-pass cost in padded tokens for splitting a batch by length; < 0: never split
    maxItemsPerRequest: int = 16         # texts per KServe request
    maxTextChars: int = 100_000          # characters per text, checked before tokenizing

    def check(self) -> None:
        super().check()
        _at_least("maxTokens", self.maxTokens, 1)
        _at_least("maxTextChars", self.maxTextChars, 1)


@dataclass
class TextClassifierSettings(TextSettings):
    labelsFile: Optional[str] = "index_to_name.json"
    topk: Optional[int] = None           # default: every label

    def check(self) -> None:
        super().check()
        if self.topk is not None:
            _at_least("topk", self.topk, 1)


@dataclass
class TextEmbeddingSettings(TextSettings):
    pass


@dataclass
class ObjectDetectorSettings(ImageSettings):
    labelsFile: Optional[str] = "index_to_name.json"
    scoreThreshold: float = 0.5          # the lowest score answered (a request's "threshold" overrides it)
    maxDetections: int = 100             # the most detections answered (a request's "max_detections" overrides it)
    maxImagePixels: int = 40_000_000     # the image classifier's pixel budgets
    maxItemsPerRequest: int = 16         # images per KServe request
    maxPixelsPerRequest: int = 40_000_000

    def check(self) -> None:
        super().check()
        for key in ("maxDetections", "maxImagePixels"):
            _at_least(key, getattr(self, key), 1)
        if not 0 <= self.scoreThreshold <= 1:
            raise SettingsError(f"handler.scoreThreshold: must be from 0 to 1, got {self.scoreThreshold}")
        check_pixel_budgets(self.maxImagePixels, self.maxPixelsPerRequest)


@dataclass
class ImageSegmenterSettings(ImageSettings):
    labelsFile: Optional[str] = "index_to_name.json"
    inputSize: int = 520                 # the model's input [N, 3, inputSize, inputSize]: resized, never cropped
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    maxImagePixels: int = 40_000_000     # a declared width*height above this answers 413 before decoding
    # height x width x classes x 4 bytes: one image's logits upsampled to its size before the arg-max
    maxMaskBytes: int = 268_435_456
    maxItemsPerRequest: int = 8          # images per KServe request
    maxPixelsPerRequest: int = 40_000_000

    @property
    def input_size(self) -> int:
        return self.inputSize

    def check(self) -> None:
        super().check()
        for key in ("inputSize", "maxImagePixels", "maxMaskBytes"):
            _at_least(key, getattr(self, key), 1)
        check_pixel_budgets(self.maxImagePixels, self.maxPixelsPerRequest)
        check_mean_std(self.mean, self.std)


@dataclass
class TextGeneratorSettings(CommonSettings):
    """A causal LM decoded with a KV cache: a Hugging Face folder run eagerly (modelFormat transformers) or its
    forward exported with the cache as inputs and outputs (onnx)."""

    modelFormat: str = "transformers"
    intraOpThreads: int = 2              # one worker decodes every running sequence in one batch
    warmUpRuns: int = 1
    dtype: str = "float32"               # or bfloat16 (AVX512_BF16/AMX hosts; greedy text may differ from fp32)
    maxNewTokens: int = 512              # the most a request's max_tokens may ask
    defaultMaxTokens: int = 128          # max_tokens when a request gives none
    # longer prompts answer 413 before any token; None: the model's positions - maxNewTokens, at most 2048
    maxPromptTokens: Optional[int] = None
    maxPromptChars: int = 32_000         # checked before tokenizing
    maxSeconds: float = 300.0            # a request still running after this ends with finish_reason "length"
    maxItemsPerRequest: int = 1          # one prompt per KServe v2 request

    def check(self) -> None:
        super().check()
        if self.modelFormat not in ("transformers", "onnx"):
            raise SettingsError(f"handler.modelFormat: a text-generator is served as transformers or onnx, "
                                f"not {self.modelFormat!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise SettingsError(f"handler.dtype: must be float32 or bfloat16, got {self.dtype!r}")
        if self.modelFormat == "onnx" and self.dtype != "float32":
            raise SettingsError("handler.dtype: an onnx text-generator runs in float32 (the exported graph's type)")
        for key in ("maxNewTokens", "defaultMaxTokens", "maxPromptChars"):
            _at_least(key, getattr(self, key), 1)
        if self.maxPromptTokens is not None:
            _at_least("maxPromptTokens", self.maxPromptTokens, 1)
        if self.maxSeconds <= 0:
            raise SettingsError(f"handler.maxSeconds: must be > 0, got {self.maxSeconds}")


def read_settings(cls: Type[CommonSettings], section: Optional[dict], kind: str) -> CommonSettings:
    """The `handler:` section read as `cls` (the settings of `kind`, named in messages); SettingsError names
    the first bad key. Each handler class names its settings class, and the tools' kind modules
    (scripts/tskit/kinds) name the same one: the runtime keeps no table of kinds."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in (section or {}).items():
        if key not in fields:
            raise SettingsError(
                f"handler.{key} is not a setting of a {kind} (known: {', '.join(sorted(fields))})")
        values[key] = _typed(key, value, fields[key].type)
    settings = cls(**values)
    settings.check()
    return settings


def _typed(key: str, value: Any, annotation: Any) -> Any:
    """`value` checked against the field's annotation (bool is not taken for int; an int is taken for float)."""
    text = str(annotation)
    if value is None and "Optional" in text:
        return None
    if "List[float]" in text:
        if isinstance(value, list) and all(_is_number(v) for v in value):
            return [float(v) for v in value]
        raise SettingsError(f"handler.{key}: expected a list of numbers, got {value!r}")
    if "List[str]" in text:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise SettingsError(f"handler.{key}: expected a list of strings, got {value!r}")
    expected = {"int": int, "bool": bool, "str": str, "float": float}
    for name, python_type in expected.items():
        if text in (name, f"<class '{name}'>", f"typing.Optional[{name}]", f"Optional[{name}]"):
            if python_type is float and _is_number(value):
                return float(value)
            if isinstance(value, python_type) and not (python_type is int and isinstance(value, bool)):
                return value
            raise SettingsError(f"handler.{key}: expected {name}, got {value!r}")
    raise SettingsError(f"handler.{key}: unsupported setting type {text}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at_least(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise SettingsError(f"handler.{key}: must be >= {minimum}, got {value}")


def check_pixel_budgets(per_image: int, per_request: int) -> None:
    if per_request < per_image:
        raise SettingsError(f"handler.maxPixelsPerRequest ({per_request}) must be >= handler.maxImagePixels "
                            f"({per_image}): one image allowed alone fits a request")


def check_mean_std(mean: List[float], std: List[float]) -> None:
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != 3:
            raise SettingsError(f"handler.{key}: needs 3 values (R, G, B), got {values}")
    if any(s <= 0 for s in std):
        raise SettingsError(f"handler.std: every value must be > 0, got {std}")


def check_labels(labels: List[str], num_outputs: int, labels_file: str) -> None:
    """A labels file must name exactly the model's outputs."""
    if len(labels) != num_outputs:
        raise SettingsError(
            f"{labels_file} has {len(labels)} labels but the model gives {num_outputs} outputs")


def prompt_token_cap(settings: "TextGeneratorSettings", positions: Optional[int]) -> int:
    """The prompt cap of a generator whose model has `positions` (None: unknown); SettingsError when the
    declared caps cannot fit the model."""
    cap = settings.maxPromptTokens
    if positions is None:
        return cap or 2048
    room = positions - settings.maxNewTokens
    if room < 1:
        raise SettingsError(f"handler.maxNewTokens ({settings.maxNewTokens}) leaves no room for a prompt in the "
                            f"model's {positions} positions")
    if cap is None:
        return min(2048, room)
    if cap > room:
        raise SettingsError(f"handler.maxPromptTokens + maxNewTokens ({cap} + {settings.maxNewTokens}) exceed the "
                            f"model's {positions} positions")
    return cap
