"""Turn a loaded source into the serving format, and check the result against the source in process.

    torchscript  torch.jit.script (eager image models), else torch.jit.trace; a TorchScript source as it is
    aoti         torch.export with a dynamic batch (and, for text, sequence) dimension, compiled by
                 AOTInductor into a .pt2 package for this machine's device type (CPU here)
    onnx         torch.onnx.export (the TorchScript-based exporter, opset 17) with dynamic axes; an ONNX
                 source as it is

The parity check loads the written file with the handlers' own loader (handlers/model_formats.py),
exactly as a worker does, and compares it with the source on batches of several sizes (and lengths).
An object detector (TorchScript only) is compared on lists of images of different sizes: its detections
paired by class and box (handlers/detection.py), the largest box difference in pixels and score difference.
"""

import os
import shutil
import tempfile
import time
import warnings
from typing import Tuple

import torch

from handlers.cpu_requirements import build_host_march
from handlers.detection import compare
from handlers.model_formats import load_model
from tskit.sources import LoadedSource, SourceError

FILE_OF_FORMAT = {"torchscript": "model.pt", "aoti": "model.pt2", "onnx": "model.onnx", "openvino": "model.xml"}
PARITY_TOLERANCE = 1e-3  # largest |served - source| on logits / embeddings, relative to the outputs' scale


def example_inputs(kind, settings, batch: int = 2, length: int = 16, seed: int = 0) -> tuple:
    """The kind's example batch (kinds/inputs.py): the exporters trace it, the parity check runs it."""
    return kind.model_input.example(settings, batch, length, seed)


def export(loaded: LoadedSource, kind, model_format: str, settings, out_dir: str) -> str:
    """Write the serving file for `model_format` into out_dir; its path."""
    if model_format not in loaded.formats:
        raise SourceError(f"{loaded.description} cannot be served as {model_format}: it can give "
                          f"{', '.join(loaded.formats)} (FORMAT=...)")
    path = os.path.join(out_dir, FILE_OF_FORMAT[model_format])
    example = example_inputs(kind, settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit / torch.onnx deprecation notes; parity is checked after
        try:
            if model_format == "torchscript":
                to_torchscript(loaded.module, kind, example).save(path)
            elif model_format == "onnx":
                to_onnx(loaded, kind, example, path, settings)
            elif model_format == "openvino":
                to_openvino(loaded, kind, example, path, settings)
            else:
                to_aoti(loaded, kind, example, settings, path)
        except SourceError:
            raise
        except Exception as err:  # an exporter's own error, long and internal: its first line names the cause
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise SourceError(f"{loaded.description} could not be exported as {model_format}: {first[:400]}") from err
    return path


def to_torchscript(module, kind, example) -> torch.jit.ScriptModule:
    if isinstance(module, torch.jit.ScriptModule):
        return module
    return kind.model_input.to_torchscript(module, example)


def to_onnx(loaded: LoadedSource, kind, example, path: str, settings=None) -> None:
    if loaded.onnx_file:
        shutil.copy(loaded.onnx_file, path)
        return
    if loaded.exported is not None:  # a torch.export program: the TorchScript-based exporter cannot take it
        program = exported_program(loaded.module, kind, example, settings)
        torch.onnx.export(program, f=path, dynamo=True, opset_version=18, external_data=False)
        return
    model_input = kind.model_input
    names, axes = list(model_input.names), model_input.dynamic
    torch.onnx.export(loaded.module, example, path, dynamo=False, opset_version=17, input_names=names,
                      output_names=["output"], dynamic_axes={name: axes for name in names + ["output"]},
                      do_constant_folding=True)


def to_openvino(loaded: LoadedSource, kind, example, path: str, settings) -> None:
    """OpenVINO's IR (path: model.xml, beside it model.bin) from the same source the other formats use: an ONNX
    file or a torch.export program as they are, else the ONNX graph the `onnx` format would serve (OpenVINO's
    PyTorch frontend could not convert a scripted module wrapped to pick torchvision's {"out": ...}); the
    batch (and a text's sequence) dimension dynamic; weights kept fp32 (no fp16 compression). A declaration's
    bf16 or int8 (loaded.openvino_precision) is made here: see openvino_int8 and OpenVinoModel."""
    import openvino

    with tempfile.TemporaryDirectory(prefix="openvino-") as work:
        source = loaded.onnx_file or loaded.exported
        if source is None:
            source = os.path.join(work, "model.onnx")
            to_onnx(loaded, kind, example, source, settings)
        model = openvino.convert_model(source)
    dynamic = kind.model_input.dynamic  # those dimensions -1, the others as the example's
    model.reshape({port: openvino.PartialShape([-1 if axis in dynamic else size for axis, size in enumerate(tensor.shape)])
                   for port, tensor in zip(model.inputs, example)})
    if loaded.openvino_precision == "int8":
        model = openvino_int8(model, settings)
    elif loaded.openvino_precision == "bf16":  # read back by handlers/model_formats.OpenVinoModel
        model.set_rt_info("bf16", ["runtime_options", "INFERENCE_PRECISION_HINT"])
    openvino.save_model(model, path, compress_to_fp16=False)


def openvino_int8(model, settings):
    """NNCF's post-training int8 of an image model's IR, calibrated on the real photos int8 ONNX Runtime uses
    (tskit.real_images: never the ones agreement is measured on), preprocessed as the handler does."""
    import nncf
    from tskit.real_images import calibration_batches

    batches = list(calibration_batches(settings=settings))
    return nncf.quantize(model, nncf.Dataset(batches), subset_size=sum(len(b) for b in batches))


def exported_program(module, kind, example, settings):
    """torch.export with the input's dynamic dimensions (kinds/inputs.py: the batch, its range inferred so a .pt2
    source keeps its own limits; a text's sequence up to the model's token limit)."""
    with torch.no_grad():
        return torch.export.export(module, example, dynamic_shapes=kind.model_input.export_dims(settings))


def to_aoti(loaded: LoadedSource, kind, example, settings, path: str) -> None:
    import torch._inductor

    program = exported_program(loaded.module, kind, example, settings)
    configs = {"freezing": True}
    march = build_host_march()
    if march:  # the ISA's x86-64 level, not -march=native: the archive's requiredCpuFlags then cover every instruction
        configs["cpp.march"] = march
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(program, package_path=path, inductor_configs=configs)


def parity(loaded: LoadedSource, kind, model_format: str, settings, path: str,
           strict: bool = True, reference_module=None) -> Tuple[float, int]:
    """Largest |served - source| and the served model's output width (the number of classes, or the embedding
    size), as the kind's input compares them (kinds/inputs.py: tensors here, a detector's detections)."""
    return kind.model_input.parity(loaded, model_format, settings, path, strict, reference_module)


def tensor_parity(model_input, loaded: LoadedSource, model_format: str, settings, path: str,
                  strict: bool = True, reference_module=None) -> Tuple[float, int]:
    """Over several batch sizes (and text lengths), loaded as a worker loads it. The source is `reference_module`
    where given (the fp32 module of an int8 or bf16 build), else loaded.module."""
    served = load_model(path, model_format, torch.device("cpu"), threads=torch.get_num_threads(),
                        optimize=settings.optimizeForInference)
    worst, scale = 0.0, 1.0
    with torch.inference_mode():
        for seed, (batch, length) in enumerate(model_input.parity_shapes):
            inputs = model_input.example(settings, batch, length, seed=seed + 1)
            reference, answer = (reference_module or loaded.module)(*inputs), served(*inputs)
            worst = max(worst, (answer.float() - reference.float()).abs().max().item())
            scale = max(scale, reference.float().abs().max().item())
    if strict and worst > PARITY_TOLERANCE * scale:
        raise SourceError(f"the {model_format} model differs from its source by {worst:.2e} "
                          f"(outputs up to {scale:.2f}): not served")
    # classes or embedding size: the last axis, or a segmenter's class axis of its [N, C, H, W] logits
    return worst, int(answer.shape[1] if answer.dim() == 4 else answer.shape[-1])


def detector_parity(model_input, loaded: LoadedSource, settings, path: str, strict: bool = True) -> Tuple[float, int]:
    """Largest box difference (pixels) between the served detector and its source, on the input's example list of
    images of different sizes and on one image alone; scores must agree within PARITY_TOLERANCE and every
    detection must have its partner. Returns it and the model's class count."""
    from handlers.detection import DetectionOptions, answer, model_detections

    served = load_model(path, "torchscript", torch.device("cpu"), threads=torch.get_num_threads(),
                        optimize=settings.optimizeForInference)
    labels = [str(i) for i in range(loaded.classes)]
    everything = DetectionOptions(0.0, 1_000_000)
    worst = None
    with torch.inference_mode():
        for seed, count in enumerate((3, 1)):
            (images,) = model_input.example(settings, batch=count, seed=seed + 1)
            largest = max(max(image.shape[1:]) for image in images)
            pairs = zip(model_detections(loaded.module(images)), model_detections(served(images)))
            for reference, answered in pairs:
                difference = compare(answer(reference, labels, everything)["detections"],
                                     answer(answered, labels, everything)["detections"])
                worst = difference if worst is None or difference.box > worst.box else worst
                if strict and (difference.box > PARITY_TOLERANCE * largest
                               or difference.score > PARITY_TOLERANCE or difference.unmatched):
                    raise SourceError(f"the served detector differs from its source: {difference}: not served")
    return worst.box, loaded.classes


def build_model_file(loaded: LoadedSource, kind, model_format: str, settings, out_dir: str,
                     strict: bool = True, reference_module=None) -> dict:
    """Export, then check; a report of the file, its build time and its parity with the source.
    `strict=False` (int8, bf16) reports the difference from `reference_module` (their fp32 source) without
    failing: agreement is measured on real data."""
    started = time.perf_counter()
    path = export(loaded, kind, model_format, settings, out_dir)
    built = time.perf_counter()
    worst, width = parity(loaded, kind, model_format, settings, path, strict, reference_module)
    side = [os.path.splitext(path)[0] + ".bin"] if model_format == "openvino" else []  # the IR's weights
    return {"file": path, "extra": side, "format": model_format, "build_s": round(built - started, 1),
            "max_abs_diff": worst, "outputs": width, "bytes": sum(os.path.getsize(f) for f in [path] + side)}
