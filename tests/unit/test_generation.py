"""The text generator's pure steps: the batched KV cache against transformers' generate, the text a sequence
releases (stop strings, held-back characters), and every option a request may get wrong."""

import json

import onnx
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from handlers.decoders import OnnxDecoder, TorchDecoder, export_onnx, use_packed_gqa
from handlers.generation import RunningBatch, Sampling, Sequence, held_back, make_generator, next_tokens, sample
from handlers.generation_engine import Engine, prefill_groups
from handlers.generation_protocols import ChatStream, CompletionStream, NativeStream, NativeWhole, Result
from handlers.generation_request import Limits, PromptTooLong, check_prompt_size, read_messages, read_options, read_prompt
from handlers.request_errors import EmptyText, InvalidField, InvalidUTF8

LIMITS = Limits(max_new_tokens=512, max_prompt_tokens=2048, max_prompt_chars=32000, default_max_tokens=128)
EOS = 2


def tiny(architecture: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if architecture == "llama":
        config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             eos_token_id=EOS, pad_token_id=EOS)
        return LlamaForCausalLM(config).eval()
    config = GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=256, eos_token_id=EOS,
                        pad_token_id=EOS)
    return GPT2LMHeadModel(config).eval()


PROMPTS = [[5, 17, 42, 9], [100, 3, 250, 7, 7, 61, 12, 90, 33], [8], [44, 45, 46, 47, 48, 49]]


def reference(model, prompt, new):
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                             eos_token_id=None, pad_token_id=EOS)
    return out[0, len(prompt):].tolist()


def decode_greedy(decoder, arrivals, lengths):
    """Greedy tokens per id; `arrivals` maps a step to the prompts that join then (prefilled together)."""
    batch, made = RunningBatch(decoder), {}
    for step in range(60):
        joining = arrivals.get(step, {})
        if joining:
            logits = batch.prefill(joining)
            for row, sid in enumerate(joining):
                made[sid] = [int(torch.argmax(logits[row]))]
                batch.set_last(sid, made[sid][0])
        elif len(batch):
            rows = list(batch.ids)
            for sid, token in zip(rows, torch.argmax(batch.step(), dim=-1).tolist()):
                made[sid].append(token)
                batch.set_last(sid, token)
            batch.drop([sid for sid in rows if len(made[sid]) == lengths[sid]])
    assert len(batch) == 0 and batch.cache_bytes() == 0
    return made


ARRIVALS = {0: {"0": PROMPTS[0], "1": PROMPTS[1]}, 3: {"2": PROMPTS[2], "3": PROMPTS[3], "4": PROMPTS[1][:5]}}
LENGTHS = {"0": 12, "1": 5, "2": 12, "3": 9, "4": 12}
ONE_BY_ONE = {2 * i: {str(i): prompt} for i, prompt in enumerate(PROMPTS)}  # "1" leaves early: its columns cut


def check_against_generate(model, made, arrivals, lengths):
    for sid, prompt in {k: v for group in arrivals.values() for k, v in group.items()}.items():
        assert made[sid] == reference(model, prompt, 12)[:lengths[sid]], sid


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
@pytest.mark.parametrize("arrivals", [ONE_BY_ONE, ARRIVALS], ids=["one-by-one", "together"])
def test_rows_joining_together_or_alone_and_leaving_equal_generate_alone(architecture, arrivals):
    """Sequences join at different steps, alone or prefilled together (cache padded either way), and leave
    early; each row's tokens are transformers' greedy generate of its prompt alone, token for token."""
    model = tiny(architecture)
    check_against_generate(model, decode_greedy(TorchDecoder(model), arrivals, LENGTHS), arrivals, LENGTHS)


def test_the_onnx_decoder_decodes_what_generate_does(tmp_path):
    """The forward exported with its cache as inputs and outputs (format onnx), run by ONNX Runtime, joined,
    padded and cut like the eager one: the same greedy tokens as generate."""
    model = tiny("llama")
    decoder = OnnxDecoder(export_onnx(model, str(tmp_path)), torch.device("cpu"), 1)
    assert (decoder.layers, decoder.heads, decoder.head_dim) == (2, 2, 16)
    check_against_generate(model, decode_greedy(decoder, ARRIVALS, LENGTHS), ARRIVALS, LENGTHS)


def test_the_fused_graph_decodes_what_generate_does_with_its_cache_updated_in_place(tmp_path, monkeypatch):
    """ONNX Runtime GenAI's builder graph, adapted for left-padded rows (format onnx for a Llama): prompts of
    different lengths prefilled together, rows joining, leaving and cut, the cache buffers written in place
    between joins and regrown when full: the same greedy tokens as generate."""
    from handlers import fused_decoder

    model = tiny("llama")
    decoder = build_tiny_fused(model, tmp_path)
    assert isinstance(decoder, fused_decoder.FusedOnnxDecoder) and decoder.one_row is None  # fp32 weights: none
    assert (decoder.layers, decoder.heads, decoder.head_dim) == (2, 2, 16)
    monkeypatch.setattr(fused_decoder, "COLUMNS_AHEAD", 3)  # regrown every few steps
    for arrivals in (ARRIVALS, ONE_BY_ONE):
        check_against_generate(model, decode_greedy(decoder, arrivals, LENGTHS), arrivals, LENGTHS)
    batch = RunningBatch(decoder)
    batch.prefill({"a": PROMPTS[0], "b": PROMPTS[1]})
    batch.step()
    buffers = list(decoder.buffers)
    batch.step()  # nothing joined or left: the same buffers, written in place
    assert all(a is b for a, b in zip(buffers, decoder.buffers))
    assert batch.cache.layers[0].keys.data_ptr() == decoder.buffers[0].ctypes.data


def snap_to_gguf_grids(model: torch.nn.Module) -> None:
    """Every linear layer's weights onto Q4_1's grid (d * q + m per 32-block), the LM head onto Q8_0's, as a
    model read from a GGUF has them."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                blocks = module.weight.reshape(module.weight.shape[0], -1, 32)
                if name == "lm_head":
                    d = blocks.abs().amax(-1, keepdim=True) / 127
                    snapped = torch.round(blocks / d) * d
                else:
                    low = blocks.amin(-1, keepdim=True)
                    d = (blocks.amax(-1, keepdim=True) - low) / 15
                    snapped = torch.round((blocks - low) / d) * d + low
                module.weight.copy_(snapped.reshape_as(module.weight))


def build_tiny_fused(model, folder):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from handlers.decoders import onnx_decoder
    from tskit.fused_graph import build_fused

    model.save_pretrained(folder)
    vocabulary = Tokenizer(models.WordLevel({f"t{i}": i for i in range(300)}, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=vocabulary, eos_token=f"t{EOS}").save_pretrained(folder)
    return onnx_decoder(build_fused(str(folder), str(folder)), torch.device("cpu"), 1)


def test_weights_on_a_ggufs_grids_get_a_one_row_graph_that_decodes_what_generate_does(tmp_path):
    """A model whose weights lie on Q4_1's and Q8_0's grids (as a GGUF's do): the build writes the one-row graph
    (the same weights in 4 and 8 bits), which the decoder runs whenever a single row is running; rows joining
    and leaving move between the two graphs over the same cache buffers, and every row's greedy tokens stay
    generate's."""
    model = tiny("llama")
    snap_to_gguf_grids(model)
    decoder = build_tiny_fused(model, tmp_path)
    assert decoder.one_row is not None
    nodes = [n.op_type for n in onnx.load(str(tmp_path / "decoder_one_row.onnx"), load_external_data=False).graph.node]
    assert nodes.count("MatMulNBits") == 2 * 5 + 1  # per layer: q/k/v (one product), o, gate, up, down; the head
    for arrivals in (ARRIVALS, ONE_BY_ONE):
        check_against_generate(model, decode_greedy(decoder, arrivals, LENGTHS), arrivals, LENGTHS)


def test_packed_grouped_query_attention_is_sdpa_bit_for_bit():
    """The attention the ONNX graph is exported with (no repeated cache) against transformers' SDPA, on a padded
    prefill and a decode step over the cache; a model without groups is left as it is."""
    model = tiny("llama")
    ids, mask = torch.tensor([[0, 0, 5, 17, 42], [8, 9, 10, 11, 12]]), torch.tensor([[0, 0, 1, 1, 1], [1] * 5])
    positions = (mask.cumsum(1) - 1).clamp(min=0)

    def run():
        decoder = TorchDecoder(model)
        first, cache = decoder(ids, mask, positions, None)
        second, _ = decoder(torch.tensor([[3], [4]]), F.pad(mask, (0, 1), value=1), positions[:, -1:] + 1, cache)
        return first, second

    expected = run()
    assert use_packed_gqa(model) and model.config._attn_implementation == "packed_gqa"
    assert all(torch.equal(a, b) for a, b in zip(expected, run()))
    assert not use_packed_gqa(tiny("gpt2"))


class FailsOn:
    """An eager decoder whose prefill fails when a prompt holds `token` (a request that breaks the model)."""

    def __init__(self, model, token):
        self.inner, self.token, self.device = TorchDecoder(model), token, torch.device("cpu")

    def __call__(self, ids, mask, positions, cache):
        if cache is None and bool((ids == self.token).any()):
            raise RuntimeError("this prompt breaks the model")
        return self.inner(ids, mask, positions, cache)


def test_a_prefill_that_fails_fails_only_the_request_that_caused_it():
    engine = Engine(FailsOn(tiny("llama"), 250), lambda ids: " ".join(map(str, ids)), [EOS], max_seconds=60)
    options = read_options({"max_tokens": 5, "temperature": 0}, LIMITS)
    for sid, prompt in enumerate(PROMPTS):  # PROMPTS[1] holds 250
        engine.start(str(sid), prompt, options, NativeStream(), in_call=False)
    failed = engine.prefill()
    assert list(failed) == ["1"] and "1" not in engine.table and engine.running() == 3
    assert sorted(engine.table) == ["0", "2", "3"] and all(len(engine.table[s].sequence.tokens) == 1 for s in "023")


def test_prompts_are_grouped_within_the_prefill_budget():
    prompts = {"a": [1] * 3, "b": [1] * 5, "c": [1] * 2, "d": [1] * 20, "e": [1]}
    assert [list(g) for g in prefill_groups(prompts, 16)] == [["a", "b", "c"], ["d"], ["e"]]


def test_the_engine_frees_what_a_gone_client_held():
    model = tiny("llama")
    engine = Engine(TorchDecoder(model), lambda ids: " ".join(map(str, ids)), [EOS], max_seconds=60)
    options = read_options({"max_tokens": 50, "temperature": 0}, LIMITS)
    for sid, prompt in enumerate(PROMPTS[:3]):
        engine.start(str(sid), prompt, options, NativeStream(), in_call=False)
    assert engine.prefill() == {}
    engine.step()
    held = engine.cache_bytes()
    engine.forget(["1"])
    assert engine.running() == 2 and 0 < engine.cache_bytes() < held and "1" not in engine.table
    engine.forget(["0", "2"])
    assert engine.running() == 0 and engine.cache_bytes() == 0 and not engine.table


def test_a_seed_repeats_the_sampled_tokens():
    logits = torch.randn(300)
    sampling = Sampling(temperature=1.0, top_p=0.9, top_k=50, seed=7)
    first = [sample(logits, sampling, g) for g in [make_generator(sampling)] for _ in range(20)]
    again = [sample(logits, sampling, g) for g in [make_generator(sampling)] for _ in range(20)]
    assert first == again and len(set(first)) > 1
    assert sample(logits, Sampling(temperature=0.0), None) == int(torch.argmax(logits))
    top1 = Sampling(temperature=1.0, top_k=1, seed=1)
    assert next_tokens(logits.unsqueeze(0), [Sequence(1, 5, top1, generator=make_generator(top1))]) == \
        [int(torch.argmax(logits))]


def words(ids):
    return "".join(["Hello", " wor", "ld", "!", " END", " more", "\ufffd"][i] for i in ids)


WORD_EOS = [99]  # the end-of-sequence token of `words`' vocabulary


def test_a_stop_string_ends_the_text_before_it_even_across_tokens():
    sequence = Sequence(3, 10, Sampling(0.0), stop=("world!",))
    pieces = [sequence.add(t, WORD_EOS, words) for t in (0, 1, 2)]
    assert pieces == ["Hello", " ", ""] and not sequence.done  # "wor", then "world", may begin the stop: held
    assert sequence.add(3, WORD_EOS, words) == "" and sequence.finish_reason == "stop"
    assert sequence.text == "Hello "


def test_held_back_text_is_released_when_it_is_not_a_stop():
    sequence = Sequence(3, 10, Sampling(0.0), stop=(" world?",))
    assert [sequence.add(t, WORD_EOS, words) for t in (0, 1, 2, 3)] == ["Hello", "", "", " world!"]
    assert sequence.add(99, WORD_EOS, words) == "" and sequence.finish_reason == "stop"
    assert held_back("abc\ufffd", ()) == 1 and held_back("ab", ("bcd",)) == 1


def test_max_tokens_ends_with_length_and_releases_everything():
    sequence = Sequence(3, 2, Sampling(0.0), stop=("worx",))
    assert sequence.add(0, WORD_EOS, words) == "Hello"
    assert sequence.add(1, WORD_EOS, words) == " wor" and sequence.finish_reason == "length"


BAD_OPTIONS = [
    ({"temperature": -1}, "temperature"), ({"temperature": 2.5}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"), ({"top_p": 0}, "top_p"), ({"top_k": -1}, "top_k"), ({"top_k": 1.5}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 10**9}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
    ({"seed": "x"}, "seed"), ({"seed": 1.5}, "seed"), ({"stop": 3}, "stop"), ({"stop": ["a", 1]}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": ""}, "stop"), ({"stream": "yes"}, "stream"),
    ({"temperature": float("nan")}, "temperature"),
]


@pytest.mark.parametrize("options,field", BAD_OPTIONS, ids=[json.dumps(o) for o, _ in BAD_OPTIONS])
def test_each_malformed_option_is_a_400_naming_its_field(options, field):
    with pytest.raises(InvalidField) as err:
        read_options(options, LIMITS)
    assert err.value.status == 400 and f"'{field}'" in err.value.message


def test_defaults_and_openai_names():
    options = read_options({}, LIMITS)
    assert (options.max_tokens, options.sampling, options.stop, options.stream) == (128, Sampling(1.0, 1.0, 0, None), (), False)
    openai = read_options({"max_completion_tokens": 7, "stop": "\n", "stream": True,
                           "stream_options": {"include_usage": True}}, LIMITS, openai=True)
    assert (openai.max_tokens, openai.stop, openai.include_usage) == (7, ("\n",), True)
    with pytest.raises(InvalidField, match="'n'"):
        read_options({"n": 2}, LIMITS, openai=True)


@pytest.mark.parametrize("document,error", [
    ({"prompt": ""}, EmptyText), ({"prompt": "  \n"}, EmptyText), ({"prompt": 5}, InvalidField), ({}, InvalidField),
    ({"prompt": "a\ud800b"}, InvalidUTF8), ({"messages": []}, InvalidField),
    ({"messages": [{"role": "robot", "content": "hi"}]}, InvalidField),
    ({"messages": [{"role": "user", "content": 3}]}, InvalidField), ({"messages": ["hi"]}, InvalidField),
    ({"messages": [{"role": "user", "content": ""}]}, EmptyText),
    ({"messages": [{"role": "user", "content": "\udfff"}]}, InvalidUTF8),
])
def test_a_bad_prompt_or_chat_is_refused_before_any_token(document, error):
    with pytest.raises(error):
        read_prompt(document)


def test_prompt_caps_are_413():
    with pytest.raises(PromptTooLong) as err:
        check_prompt_size(10, 2049, LIMITS)
    assert err.value.status == 413 and "maxPromptTokens" in err.value.message
    with pytest.raises(PromptTooLong):
        check_prompt_size(32001, None, LIMITS)
    assert read_messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])[1]["role"] == "user"


RESULT = Result("Hello world", "stop", 4, 2)


def test_the_framings_join_to_the_whole_answer():
    ndjson = NativeStream().chunk("Hello", True) + NativeStream().end(" world", RESULT, False)
    lines = [json.loads(line) for line in ndjson.splitlines()]
    assert "".join(line["text"] for line in lines) == "Hello world" and lines[-1]["finish_reason"] == "stop"
    assert lines[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2}
    assert json.loads(NativeWhole().end("", RESULT, False))["text"] == "Hello world"
    chat = ChatStream("m", "chatcmpl-1", include_usage=True)
    events = (chat.chunk("Hello", True) + chat.end(" world", RESULT, False)).decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello world"
    assert chunks[-1]["usage"]["total_tokens"] == 6 and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    completion = CompletionStream("m", "cmpl-1").end("x", RESULT, True).decode()
    assert completion.endswith("data: [DONE]\n\n") and '"finish_reason": "stop"' in completion
