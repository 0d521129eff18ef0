"""A seeded grammar of HTTP request mutations over the inference routes, in the style of Triton's
L0_http_fuzz: each request is a known-good one (a template: route, model, form), sent as it is or
changed by one mutation operator chosen by the seed. Used by tests/integration/test_http_fuzz.py.

Pure: it builds requests (method, path, headers, body) and knows nothing about sending or judging.
Request `i` of a seed is built from its own `random.Random(f"{seed}:{i}")`, so any one request can be
rebuilt alone and written out as the raw bytes that were sent:

    .venv/bin/python tests/http_mutations.py --seed 20251717 --job 123 [--out req.http]

The modules: `requests_model` (routes, models, `Request`, `Template`, the known-good forms, the operator
registry), `json_mutations` (bytes: flips, truncation, splices; JSON: wrong types, dropped and unknown
keys, syntax, duplicates, deep nesting, huge numbers, long strings, unicode with lone surrogates),
`v2_mutations` (v2: shapes, datatypes, data, inputs, parameters, outputs, ids, top-k; the binary
extension: `Inference-Header-Content-Length` values, element lengths, `binary_data_size`),
`protocol_mutations` (content types, multipart field names, parts, boundaries and dispositions, text
encodings, HTTP methods, paths, `Expect`, chunked framing, odd headers, and a few heavy ones: megabyte
strings and shapes, bodies over `max_request_size`), `sequence` (`job`, `family`, the command line).
"""

from .requests_model import (HEADER_LENGTH, HEADLINES, MODELS, OPERATORS, ROUTES, TEXT_MODELS, VISION, Operator,
                             Pool, Request, Template, chunks, multipart_body, operator, path_of, templates)
from .sequence import GOOD_EVERY, family, job, main

__all__ = ["GOOD_EVERY", "HEADER_LENGTH", "HEADLINES", "MODELS", "OPERATORS", "ROUTES", "TEXT_MODELS", "VISION",
           "Operator", "Pool", "Request", "Template", "chunks", "family", "job", "main", "multipart_body",
           "operator", "path_of", "templates"]
