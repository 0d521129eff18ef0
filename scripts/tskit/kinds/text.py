"""What the text kinds share: their `make model` template (the settings of handlers/model_settings.TextSettings)."""

TEXT_TEMPLATE = """\
  intraOpThreads: 1           # workers x threads <= cores
  # maxTokens: 256            # default: the checkpoint's limit (sentence-transformers' max_seq_length,
                              # else max_position_embeddings, at most 512); longer texts say "truncated"
  # Per-request budgets, answered 413 before tokenizing (docs/limits-and-overload.md): keep
  # batchSize x maxItemsPerRequest x the model's time per maxTokens text well under responseTimeout
  maxItemsPerRequest: 16      # texts per KServe request
  maxTextChars: 100000        # characters per text
"""
