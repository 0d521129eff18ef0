"""A causal language model's source -> the Hugging Face folder a text-generator archive serves.

    load_causal_lm(source, base_dir)   a .gguf file (llama.cpp's format: weights, tokenizer and chat template
                                       in one file; transformers dequantises it with the `gguf` package), a
                                       Hugging Face folder (config.json, weights, tokenizer), or python:mod:fn
                                       returning either path
    build_folder(lm, work, format)     the folder: config, generation config, tokenizer, chat template and
                                       either fp32 safetensors (`transformers`: eager PyTorch) or decoder.onnx
                                       (`onnx`: ONNX Runtime GenAI's fused graph, tskit/fused_graph.py, or for
                                       an architecture its builder has no recipe for, the forward with its
                                       cache as inputs and outputs exported by torch.onnx); checked by greedy
                                       decoding from it against the source in process
Per decode step the fused graph was the fastest form measured on this package's CPUs (docs/generation.md; `make
bench` measures the served one against eager on the host); its builder takes ~15 s for a 135M model, torch.onnx's
export ~2 minutes.
"""

import importlib
import os
import time
from dataclasses import dataclass, field
from typing import List, Tuple

import torch

from tskit.sources import SourceError

PARITY_PROMPT = "The capital of France is"
PARITY_TOKENS = 12
# an exported decoder serves only if its greedy text equals the source's on each (make optimize's agreement rule)
AGREEMENT_PROMPTS = (PARITY_PROMPT, "def fibonacci(n):", "Once upon a time, in a small village,")
FORMATS = ("transformers", "onnx")


@dataclass
class CausalLM:
    model: torch.nn.Module
    tokenizer: object
    description: str
    dependencies: List[str] = field(default_factory=list)


def source_formats(source: str) -> Tuple[str, ...]:
    """What a generator source can give, judged by its name: a .gguf, a folder or python: -> transformers."""
    if source.startswith("python:") or os.path.isdir(source) or source.endswith(".gguf"):
        return FORMATS
    return ()


def resolve_source(source: str, base_dir: str) -> Tuple[str, List[str]]:
    """A source's path (python:mod:fn called; a relative path from base_dir) and the module files it came from."""
    if source.startswith("python:"):
        module_name, function_name = source[len("python:"):].split(":")
        module = importlib.import_module(module_name)
        path, modules = resolve_source(getattr(module, function_name)(), base_dir)
        return path, modules + [module.__file__]
    return (source if os.path.isabs(source) else os.path.normpath(os.path.join(base_dir, source))), []


def load_causal_lm(source: str, base_dir: str) -> CausalLM:
    path, modules = resolve_source(source, base_dir)
    lm = _load_path(path)
    lm.dependencies.extend(modules)
    return lm


def _load_path(path: str) -> CausalLM:
    if not os.path.exists(path):
        raise SourceError(f"source {path} does not exist")
    if path.endswith(".gguf") and os.path.isfile(path):
        return _gguf(path)
    if os.path.isdir(path):
        return _folder(path)
    raise SourceError(f"source {path}: a text-generator source is a .gguf file or a Hugging Face folder "
                      f"(config.json, weights, tokenizer.json) of a causal language model")


def _gguf(path: str) -> CausalLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as err:
        raise SourceError(f"{path}: transformers cannot read this GGUF file ({err})") from None
    # dequantised to fp32 on load: served as a plain fp32 checkpoint (no quantizer left to refuse saving)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return CausalLM(model.eval(), tokenizer, f"GGUF {path}", [path])


def _folder(path: str) -> CausalLM:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    for needed in ("config.json", "tokenizer.json"):
        if not os.path.isfile(os.path.join(path, needed)):
            raise SourceError(f"{path} has no {needed}: a Hugging Face causal LM folder needs config.json, "
                              f"its weights and a fast tokenizer's tokenizer.json")
    architectures = AutoConfig.from_pretrained(path).architectures or []
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise SourceError(f"{path}: config.json's architectures {architectures} name no causal language model "
                          f"(*ForCausalLM / *LMHeadModel)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    files = [os.path.join(path, f) for f in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, f))]
    return CausalLM(model.eval(), AutoTokenizer.from_pretrained(path), f"Hugging Face causal LM {path}", files)


def check_caps(lm: CausalLM, settings) -> None:
    """The declaration's token caps against the model's positions, at build time rather than at load."""
    from handlers.model_settings import SettingsError, prompt_token_cap

    try:
        prompt_token_cap(settings, getattr(lm.model.config, "max_position_embeddings", None))
    except SettingsError as err:
        raise SourceError(f"{lm.description}: {err}") from None


def build_folder(lm: CausalLM, work: str, model_format: str = "transformers") -> dict:
    """Write the served folder into work/model; returns the build report (files, parity, time)."""
    started = time.perf_counter()
    folder = os.path.join(work, "model")
    os.makedirs(folder, exist_ok=True)
    lm.model.save_pretrained(folder, safe_serialization=True)
    lm.tokenizer.save_pretrained(folder)
    if lm.model.generation_config.eos_token_id is None:
        raise SourceError(f"{lm.description}: no end-of-sequence token (generation_config.eos_token_id)")
    expected, got = greedy(lm.model, lm.tokenizer), greedy_from(folder)
    if expected != got:
        raise SourceError(f"the saved folder generates {got} from {PARITY_PROMPT!r}, the source {expected}")
    weights = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors")]
    if len(weights) != 1:
        raise SourceError(f"expected one safetensors file in {folder}, found {len(weights)}")
    served = weights[0]
    if model_format == "onnx":
        served = export_checked(lm, folder)
        os.remove(weights[0])  # the graph carries the weights
    built = time.perf_counter()
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    return {"file": served, "extra": [f for f in files if f != served], "format": model_format,
            "build_s": round(built - started, 1), "parity_tokens": len(got), "outputs": 0,
            "bytes": sum(os.path.getsize(f) for f in files),
            "parameters": sum(p.numel() for p in lm.model.parameters())}


def export_checked(lm: CausalLM, folder: str) -> str:
    """decoder.onnx in `folder`, served only if its greedy text equals the source's on AGREEMENT_PROMPTS."""
    from handlers.decoders import onnx_decoder

    path = export_graph(lm, folder)
    decoder = onnx_decoder(path, torch.device("cpu"), torch.get_num_threads())
    # alone (a single row: the one-row graph where the build wrote one) and together (the main graph)
    together = greedy_decoder(decoder, lm.tokenizer, AGREEMENT_PROMPTS)
    for prompt in AGREEMENT_PROMPTS:
        expected = greedy(lm.model, lm.tokenizer, prompt)
        alone = greedy_decoder(decoder, lm.tokenizer, (prompt,))[prompt]
        for how, got in (("alone", alone), ("together", together[prompt])):
            if expected != got:
                raise SourceError(f"the exported decoder generates {got} from {prompt!r} ({how}), the source "
                                  f"{expected}: not served (FORMAT=transformers serves the model eagerly)")
    return path


def export_graph(lm: CausalLM, folder: str) -> str:
    """ONNX Runtime GenAI's fused graph where its builder has a recipe for the architecture (built from the
    saved folder), else the model's forward exported by torch.onnx."""
    from handlers.decoders import export_onnx
    from tskit.fused_graph import FusedUnavailable, build_fused

    try:
        return build_fused(folder, folder)
    except FusedUnavailable as err:
        print(f"  {err}\n  -> exporting the forward with torch.onnx instead", flush=True)
    try:
        return export_onnx(lm.model, folder)
    except Exception as err:  # noqa: BLE001 - the exporter's failures have many types; the message says which
        raise SourceError(f"{lm.description}: torch.onnx.export cannot export this model with its cache "
                          f"({type(err).__name__}: {str(err)[:300]}); serve it with FORMAT=transformers") from None


def greedy_decoder(decoder, tokenizer, prompts) -> dict:
    """Greedy tokens of each prompt from a decoder through the serving batch (handlers/generation.py), the
    prompts as rows of one batch (prefilled together, left-padded)."""
    from handlers.generation import RunningBatch

    batch = RunningBatch(decoder)
    logits = batch.prefill({p: tokenizer(p)["input_ids"] for p in prompts})
    made = {p: [int(torch.argmax(logits[i]))] for i, p in enumerate(prompts)}
    while len(made[prompts[0]]) < PARITY_TOKENS:
        for p in prompts:
            batch.set_last(p, made[p][-1])
        for p, token in zip(batch.ids, torch.argmax(batch.step(), dim=-1).tolist()):
            made[p].append(token)
    return made


def greedy(model: torch.nn.Module, tokenizer, prompt: str = PARITY_PROMPT) -> List[int]:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=PARITY_TOKENS, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def greedy_from(folder: str) -> List[int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    return greedy(model, AutoTokenizer.from_pretrained(folder, local_files_only=True))
