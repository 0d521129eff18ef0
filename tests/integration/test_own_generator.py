"""A user's own causal LMs through `make model KIND=text-generator`: two architectures beside the bundled Llama
(GPT-2 and Qwen2, tiny and random, tests/own_models.py), each built from its Hugging Face folder (GPT-2 served
eagerly, Qwen2 with FORMAT=onnx: ONNX Runtime GenAI's fused graph, run by ONNX Runtime), served by a real
TorchServe under continuous batching, and answering greedy prompts exactly as transformers' generate does on
the folder in process, streamed and whole."""

import json
import os
import zipfile

import onnx
import pytest
import torch

import own_models
from tskit.server import private_server, running

pytestmark = pytest.mark.heavy(seconds=60)  # seconds in a one-process run on 2 cores (tests/suite_order.py)

PROMPTS = ["The capital of France is", "Once upon a time"]
NEW = 16
FORMATS = {"gpt2": "transformers", "qwen2": "onnx"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("own_generators"))
    sources = {}
    for architecture in own_models.CAUSAL_LM_ARCHITECTURES:
        name = f"own_{architecture}"
        sources[name] = own_models.make_causal_lm(os.path.join(base, f"{architecture}_source"), architecture)
        result, _ = own_models.make_model(base, name, "text-generator", sources[name], FORMATS[architecture])
        assert result.returncode == 0, result.stdout + result.stderr
    return base, sources


def reference(folder, prompt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=NEW, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_make_model_declares_a_continuously_batched_generator(built):
    base, sources = built
    with open(os.path.join(base, "models", "own_gpt2", "model.yaml"), encoding="utf-8") as f:
        text = f.read()
    assert "kind: text-generator" in text and "format: transformers" in text and "continuousBatching: true" in text
    with zipfile.ZipFile(os.path.join(base, "model_store", "own_qwen2.mar")) as archive:
        names = set(archive.namelist())
        graph = onnx.load_model_from_string(archive.read("decoder.onnx"))
    assert {"decoder.onnx", "decoder.onnx.data", "tokenizer.json"} <= names
    assert not any(n.endswith(".safetensors") for n in names)  # the graph carries the weights
    # the builder's fused graph (its cache inputs named as ONNX Runtime GenAI names them), adapted for the batch
    inputs = [i.name for i in graph.graph.input]
    assert {"past_key_values.0.key", "position_ids"} <= set(inputs)
    assert sum(n.op_type == "GroupQueryAttention" for n in graph.graph.node) == len(inputs[3:]) // 2


def test_each_architecture_answers_as_generate_does_in_process(built):
    base, sources = built
    server = private_server(os.path.join(base, "server"), model_store=os.path.join(base, "model_store"),
                            load_models=",".join(f"{name}.mar" for name in sources))
    with running(server, timeout=300):
        client = server.client()
        for name, folder in sources.items():
            for prompt in PROMPTS:
                expected = reference(folder, prompt)
                whole = next(client.generate(name, {"prompt": prompt, "max_tokens": NEW, "temperature": 0}))
                assert whole["text"] == expected, (name, prompt)
                lines = list(client.generate(name, {"prompt": prompt, "max_tokens": NEW, "temperature": 0,
                                                    "stream": True}))
                assert "".join(line["text"] for line in lines) == expected, (name, prompt)
                assert lines[-1]["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]
