"""The model kinds: one module per kind holds everything about it; every other module looks a kind up by name.

    kind(name)          the Kind of a declaration's `kind:` (UnknownKind, listing the known kinds, otherwise)
    KINDS               name -> Kind, in the order messages list them
    parse_settings      a `handler:` section read as the kind's typed settings (handlers/model_settings.py)
    of_handler          the Kind an archive's handler file serves

A Kind's `model_input` (kinds/inputs.py: what the model takes) and `answer` (kinds/answers.py: what an answer
carries) are objects the tools ask: the exporters, the sources, the precisions, the bench's checks and
make optimize's agreement follow them, and no tool tests a kind's name or form. Adding a kind: its module here
(a `KIND = Kind(...)`, registered in _registered() below), its handler entry module and typed settings class in
handlers/, and its tests (tests/unit/test_kinds.py checks that it is complete); a new input or answer form is
one class in inputs.py or answers.py.
The handlers themselves never import this package (the runtime imports nothing from scripts/): a handler
class names its own `kind` and `settings_class`, which test_kinds checks against the Kind.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Type

from handlers.model_settings import CommonSettings, SettingsError, read_settings

from tskit.kinds.answers import Answer
from tskit.kinds.inputs import ModelInput


class UnknownKind(SettingsError):
    """A kind no module here defines. A SettingsError: whoever checks a `handler:` section catches both."""


@dataclass(frozen=True)
class Kind:
    name: str                        # a declaration's `kind:`
    handler_file: str                # handlers/<file>: the archive's TorchServe entry point
    settings: Type[CommonSettings]   # the `handler:` section's typed settings
    model_input: ModelInput          # what the model takes (kinds/inputs.py)
    answer: Answer                   # what an answer carries (kinds/answers.py)
    template: str                    # `make model`'s `handler:` section, every setting spelt out to edit
    max_batch_delay: int             # `make model`'s torchserve.maxBatchDelay (ms to wait for a batch)
    v2_outputs: Tuple[str, ...]      # the v2 output tensors of an answer, in order (the handler's `outputs`)
    int8_format: Optional[str] = None      # the format `precision: int8` is served as; None: no int8 form
    # the formats `precision: bf16` can be served as, the fastest measured first; (): no bf16 form
    bf16_formats: Tuple[str, ...] = ()
    bench_workload: Optional[str] = None   # benchkit.workloads' input the bench, tune and optimize send;
                                           # None: they have no inputs or answer checks for the kind
    torchserve_template: Optional[str] = None  # `make model`'s torchserve: section; None: the shared one
    # the reduced precisions OpenVINO's IR is also made in (tskit.formats.to_openvino): bf16 an inference hint
    # compiled in, int8 NNCF's post-training quantisation on the calibration photos
    openvino_precisions: Tuple[str, ...] = ()
    # TorchServe's own handler for the kind (the bench's stock setups A, A2 serve the same weights with it);
    # None: the bench has no stock peer for it
    stock_handler: Optional[str] = None
    formats_target: Optional[float] = None  # make bench's target for the fastest agreeing format vs TorchScript fp32
    # takes a video too (handlers/video_batch_handler.py): `make model` declares continuous batching, so a video
    # is answered frame by frame in steps and never holds the worker
    takes_video: bool = False
    # every request runs over several handler calls (a generator's tokens): TorchServe's queue latency then
    # counts whole answers, so the autoscaling signal leaves the model out (an image kind's videos are a minority)
    streams_every_request: bool = False

    @property
    def handler_module(self) -> str:
        """The handler's importable name (the runtime package `handlers`)."""
        return "handlers." + self.handler_file.removesuffix(".py")

    def parse_settings(self, section: Optional[dict]) -> CommonSettings:
        return read_settings(self.settings, section, self.name)

    def precision_formats(self, precision: str) -> Tuple[str, ...]:
        """The formats a reduced precision (int8, bf16) can be served as, the preferred first; (): no such form."""
        openvino = ("openvino",) if precision in self.openvino_precisions else ()
        if precision == "int8":
            return ((self.int8_format,) if self.int8_format else ()) + openvino
        return (self.bf16_formats if precision == "bf16" else ()) + openvino

    @property
    def bench_int8(self) -> Optional[str]:
        """The int8 format the bench measures: it judges int8 by top-1 agreement, so labelled answers only."""
        return self.int8_format if self.answer.labelled else None

    @property
    def known_answers(self) -> bool:
        """The bench's input has a right answer every variant must give (a label), not just a shape."""
        return self.answer.labelled and self.bench_workload is not None

    @property
    def agreement_metric(self) -> Optional[str]:
        """make optimize's agreement measure of a variant against fp32; None: the kind has none (or no inputs)."""
        return self.answer.metric if self.bench_workload else None


def _registered() -> Dict[str, Kind]:
    # imported here, not at the top: each kind module imports Kind from this package
    from tskit.kinds import (image_classifier, image_segmenter, object_detector, text_classifier, text_embedding,
                             text_generator)

    modules = (image_classifier, text_classifier, text_embedding, object_detector, image_segmenter,
               text_generator)  # messages' order
    return {m.KIND.name: m.KIND for m in modules}


KINDS: Dict[str, Kind] = _registered()


def kind(name: str) -> Kind:
    if name not in KINDS:
        raise UnknownKind(f"kind {name!r} is not one of {', '.join(KINDS)}")
    return KINDS[name]


def parse_settings(name: str, section: Optional[dict]) -> CommonSettings:
    """The `handler:` section of kind `name` as typed settings; SettingsError names the first bad key."""
    return kind(name).parse_settings(section)


def of_handler(handler_file: str) -> Kind:
    """The kind an archive's handler file (its MANIFEST's `handler`, "file.py[:function]") serves."""
    handler_file = handler_file.split(":")[0]
    for k in KINDS.values():
        if k.handler_file == handler_file:
            return k
    raise UnknownKind(f"handler {handler_file} serves none of the kinds {', '.join(KINDS)}")


def with_bench_inputs() -> Tuple[Kind, ...]:
    """The kinds the bench, tune and optimize have inputs and answer checks for."""
    return tuple(k for k in KINDS.values() if k.bench_workload)
