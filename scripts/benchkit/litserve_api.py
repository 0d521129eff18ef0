"""The LitAPI of the LitServe peer (benchkit.litserve_peer): the archive's own handler in process (its model file,
its settings, the kind's read_input, decode, collate, forward and postprocess), behind LitServe's batching and
HTTP instead of TorchServe's. Module level, so LitServe's spawned workers can unpickle it."""

from typing import List

import litserve as ls

from tskit.unpacked import Unpacked, answer_items, decode_body, in_process_handler

JSON = "application/json"


class ArchiveAPI(ls.LitAPI):
    def __init__(self, unpacked: Unpacked, **kwargs):
        super().__init__(**kwargs)
        self.unpacked = unpacked

    def setup(self, device):
        self.handler, _ = in_process_handler(self.unpacked, self.unpacked.settings.intraOpThreads)

    def decode_request(self, request):
        return decode_body(self.handler, request, JSON)  # LitServe gives the parsed JSON document

    def batch(self, items: List):
        return items

    def predict(self, items: List):
        return answer_items(self.handler, items)

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return output
