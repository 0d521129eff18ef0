"""The serialized model behind one callable, whatever its format: TorchScript, AOTInductor, ONNX Runtime or OpenVINO.

`load_model(path, format, device, threads, optimize)` returns a callable that takes torch tensors
(an image batch [N, 3, H, W], or input_ids and attention_mask [N, L]) and returns a torch tensor on
the same device, so the handlers do not care how the model runs. Pure: imports nothing from `ts`.
"""

import logging
import threading
from typing import Callable

import torch

log = logging.getLogger(__name__)
ModelCallable = Callable[..., torch.Tensor]


def load_model(path: str, model_format: str, device: torch.device, threads: int, optimize: bool) -> ModelCallable:
    if model_format == "torchscript":
        return load_torchscript(path, device, optimize)
    if model_format == "aoti":
        return load_aoti(path, device)
    if model_format == "onnx":
        return OnnxModel(path, device, threads)
    if model_format == "openvino":
        return OpenVinoModel(path, device, threads)
    raise ValueError(f"unknown model format {model_format!r} (a text generator loads through decoders.py)")


def load_torchscript(path: str, device: torch.device, optimize: bool) -> torch.jit.ScriptModule:
    """Load for inference; `optimize` freezes and applies the device's inference passes
    (conv-bn folding, oneDNN layouts on CPU) here at load time, so the archive stays device-neutral."""
    model = torch.jit.load(path, map_location=device).eval()
    if device.type != "cpu":
        retarget_device_constants(model, device)
    if optimize:
        model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
    return model


def retarget_device_constants(model: torch.jit.ScriptModule, device: torch.device) -> None:
    """Tracing records the device of every tensor made inside forward (the attention mask's
    `torch.arange(..., device=cpu)` of a text model) as a constant, which map_location does not move:
    seen on an H100, a text archive traced on the CPU failed with "tensors on cuda:0 and cpu". Point
    those constants at `device` (OpenAI CLIP's loader patches its traced models the same way)."""
    def patch(module):
        try:
            graph = module.graph
        except RuntimeError:  # a module without forward
            return
        for node in graph.findAllNodes("prim::Constant"):
            if node.output().type().kind() == "DeviceObjType" and node.s("value") == "cpu":
                node.s_("value", str(device))

    model.apply(patch)


def load_aoti(path: str, device: torch.device) -> ModelCallable:
    """An AOTInductor package (.pt2) compiled at build time for this device type; its batch (and for
    text, sequence) dimension is dynamic. It runs with the process's intra-op thread setting."""
    import torch._inductor

    runner = torch._inductor.aoti_load_package(path, device_index=device.index if device.type == "cuda" else -1)
    return runner


def onnx_session_options(threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # like TorchScript's intra-op threads: workers x threads <= cores
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting threads: workers share the cores with the frontend (measured: no loss at 1 thread; a
    # spinning generator worker halved its served tokens/s at 16 streams on 2 cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def decoder_session(path: str, device: torch.device, threads: int):
    """A text generator's ONNX Runtime session (decoders.py, fused_decoder.py): on the CPU, since the package's
    onnxruntime is the CPU wheel (serve `transformers` on a GPU)."""
    import onnxruntime

    if device.type == "cuda":
        log.warning("%s: the ONNX decoder runs on the CPU although the worker was given %s", path, device)
    return onnxruntime.InferenceSession(path, onnx_session_options(threads), providers=["CPUExecutionProvider"])


class OnnxModel:
    """An ONNX Runtime session whose inputs are named like the tensors it is called with, in order."""

    def __init__(self, path: str, device: torch.device, threads: int):
        import onnxruntime

        options = onnx_session_options(threads)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        elif device.type == "cuda":  # seen on an H100 with the CPU-only onnxruntime wheel
            log.warning("%s: this onnxruntime has no CUDAExecutionProvider, so the model runs on the CPU "
                        "although the worker was given %s (install onnxruntime-gpu, or serve TorchScript)",
                        path, device)
        self.session = onnxruntime.InferenceSession(path, options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.device = device

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: tensor.detach().cpu().numpy() for name, tensor in zip(self.input_names, inputs)}
        (output, *_) = self.session.run(None, feeds)
        return torch.from_numpy(output).to(self.device)


class OpenVinoModel:
    """An OpenVINO IR (model.xml beside its model.bin) compiled for the CPU, in fp32 unless its build asked for bf16
    (openvino_precision): on a host with AVX512_BF16 or AMX OpenVINO's default inference precision is bf16, which
    would change an fp32 archive's answers. Threads are not pinned to cores: a server runs several workers (and
    the frontend) on the same cores."""

    def __init__(self, path: str, device: torch.device, threads: int):
        import openvino

        if device.type == "cuda":  # the package's openvino runs its CPU plugin
            log.warning("%s: the OpenVINO model runs on the CPU although the worker was given %s", path, device)
        core = openvino.Core()
        model = core.read_model(path)
        self.precision = openvino_precision(model)
        config = {"INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                  "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        self.compiled = core.compile_model(model, "CPU", config)
        self.requests = threading.local()  # an infer request is one thread's (a worker's video threads)
        self.device = torch.device("cpu")

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        request = getattr(self.requests, "request", None)
        if request is None:
            request = self.requests.request = self.compiled.create_infer_request()
        request.infer([t.detach().cpu().numpy() for t in tensors])
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


def openvino_precision(model) -> str:
    """The inference precision an IR was built for: "bf16" where its build wrote the hint (a `precision: bf16`
    declaration), else "f32" (an int8 IR holds its own quantised operations and runs the rest in f32)."""
    options = ["runtime_options", "INFERENCE_PRECISION_HINT"]
    return model.get_rt_info(options).astype(str) if model.has_rt_info(options) else "f32"
