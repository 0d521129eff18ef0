"""tritonclient's gRPC client against a v2 gRPC server, in a process of its own: tritonclient.grpc and kserve
register the same protobuf names (`inference.*`) in protobuf's one default pool, so a test process that has
imported KServe's SDK cannot import tritonclient.grpc. Prints one JSON document: the health answers, and the
outputs of one BYTES request (or the error's status code and details).

    python tests/triton_grpc_probe.py ADDRESS KEY MODEL ELEMENT_FILE OUTPUT [OUTPUT ...]
"""

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def main(address: str, key: str, model: str, element_file: str, *outputs: str) -> dict:
    client = triton.InferenceServerClient(address)
    headers = {"authorization": f"Bearer {key}"} if key else None
    with open(element_file, "rb") as f:
        tensor = triton.InferInput("input", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([f.read()], dtype=np.object_))
    document = {"live": client.is_server_live(), "ready": client.is_server_ready(),
                "model_ready": client.is_model_ready(model)}
    try:
        result = client.infer(model, [tensor], outputs=[triton.InferRequestedOutput(o) for o in outputs],
                              headers=headers, client_timeout=120)
        document["outputs"] = {o: result.as_numpy(o).tolist() for o in outputs}
    except InferenceServerException as err:
        document["error"] = {"status": err.status(), "details": err.message()}
    return document


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), default=bytes.decode))  # BYTES elements come back as bytes
