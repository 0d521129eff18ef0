"""text-generator: a causal language model (Llama, Qwen2, SmolLM, GPT-2 families); a prompt or a chat in, text
out, whole or streamed token by token (handlers/text_generator_handler.py, docs/generation.md)."""

from handlers.model_settings import TextGeneratorSettings
from tskit.kinds import Kind
from tskit.kinds.answers import TEXT
from tskit.kinds.inputs import CAUSAL_LM

TEMPLATE = """\
  intraOpThreads: 2           # one worker decodes every running sequence in one batch: give it the cores
  dtype: float32              # or bfloat16 (AVX512_BF16/AMX hosts: faster; greedy text may differ from fp32)
  maxNewTokens: 512           # the most a request's max_tokens may ask
  defaultMaxTokens: 128       # max_tokens when a request gives none
  # maxPromptTokens: 2048     # longer prompts answer 413 before any token; default: the model's positions
                              # less maxNewTokens, at most 2048
  maxPromptChars: 32000       # checked before tokenizing
  maxSeconds: 300             # a request still running after this ends with finish_reason "length"
"""

# continuous batching: each handler call is one step for every running request plus new ones up to batchSize
TORCHSERVE_TEMPLATE = """\
  minWorkers: 1
  maxWorkers: 1
  batchSize: 16             # sequences decoded together; a request joins at the next step
  maxBatchDelay: 5          # ms to wait for more requests when none is running
  continuousBatching: true  # TorchServe calls the handler once per step (token) for every running request
  responseTimeout: 120      # seconds per step, not per answer (a long prompt's prefill is one step)
  jobQueueSize: 32          # requests waiting for a place in the running batch
  deviceType: gpu           # a GPU when the server has number_of_gpu > 0, else cpu
"""

KIND = Kind(
    name="text-generator",
    handler_file="text_generator_handler.py",
    settings=TextGeneratorSettings,
    model_input=CAUSAL_LM,
    answer=TEXT,
    template=TEMPLATE,
    max_batch_delay=5,
    v2_outputs=("text", "finish_reason", "completion_tokens"),
    torchserve_template=TORCHSERVE_TEMPLATE,
    streams_every_request=True,
)
