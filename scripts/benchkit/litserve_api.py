"""The LitAPI of the LitServe peer (benchkit.litserve_peer): an archive's model file and settings, the
handlers' own decode, collate and top-k. Module level, so LitServe's spawned workers can unpickle it."""

from typing import List

import litserve as ls
import torch

from benchkit.archives import Unpacked
from tskit import kinds

JSON = "application/json"


class ArchiveAPI(ls.LitAPI):
    def __init__(self, unpacked: Unpacked, **kwargs):
        super().__init__(**kwargs)
        self.unpacked = unpacked
        self.settings = unpacked.settings
        self.kind = unpacked.kind
        # the handlers' steps follow the kind's input (image / text) and answer (labels / embedding)
        self.image = kinds.kind(unpacked.kind).family == "image"
        self.embedding = kinds.kind(unpacked.kind).answer == "embedding"

    def setup(self, device):
        from classification import load_labels
        from model_formats import load_model

        settings = self.settings
        torch.set_num_threads(settings.intraOpThreads)
        self.model = load_model(self.unpacked.model_file, settings.modelFormat, torch.device("cpu"),
                                settings.intraOpThreads, settings.optimizeForInference)
        if not self.embedding:
            self.labels = load_labels(self.unpacked.file(settings.labelsFile))
        if not self.image:
            from text_tokenization import load_tokenizer

            self.tokenizer = load_tokenizer(self.unpacked.file(settings.tokenizerFile), settings.maxTokens)
            self.pad = self.tokenizer.token_to_id(settings.padToken)

    def decode_request(self, request):
        settings = self.settings
        if self.image:
            from image_decoding import decode_rgb
            from image_transforms import ImageItem, resize_and_crop
            from request_payload import image_request

            parsed = image_request(request, JSON, settings.topk)
            reduced = settings.resizeSize if settings.reducedJpegDecode else None
            image = decode_rgb(parsed.data, settings.maxImagePixels, reduced)
            return ImageItem(resize_and_crop(image, settings.resizeSize, settings.cropSize), parsed.topk)
        from request_payload import text_request
        from text_tokenization import tokenize

        return tokenize(self.tokenizer, text_request(request, JSON), settings.maxTokens)

    def batch(self, items: List):
        return items

    def predict(self, items: List):
        settings = self.settings
        with torch.inference_mode():
            if self.image:
                from image_transforms import collate_normalize

                crops = [item.crop for item in items]
                return self.model(collate_normalize(crops, settings.mean, settings.std, torch.device("cpu"))), items
            from text_tokenization import collate_padded

            return self.model(*collate_padded(items, self.pad, torch.device("cpu"))), items

    def unbatch(self, output):
        from classification import top_k_predictions

        outputs, items = output
        if self.embedding:
            return [{"embedding": row, "truncated": item.truncated} for row, item in zip(outputs.float().tolist(), items)]
        if self.image:
            return [{"predictions": top} for top in top_k_predictions(outputs, self.labels, [i.topk for i in items])]
        k = self.settings.topk or len(self.labels)
        return [{"predictions": top, "truncated": item.truncated}
                for top, item in zip(top_k_predictions(outputs, self.labels, [k] * len(items)), items)]

    def encode_response(self, output):
        return output
