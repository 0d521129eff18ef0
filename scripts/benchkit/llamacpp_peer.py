"""(P) llama.cpp's server on the same GGUF: the peer a CPU user would pick for generation.

`llama-cpp-python` has no wheel for this platform on PyPI: pip builds it from source (~15 minutes on 2
cores, native CPU flags). It is built once, on demand, into a virtual environment of its own
(build/peers/llamacpp: its server's FastAPI and pins stay out of the package's), and pip's wheel cache keeps
the build for a new venv. Never part of `make test`. Its server (`python -m llama_cpp.server`, OpenAI routes
with server-sent events) runs on 127.0.0.1 with the worker's thread count, stopped by pid.
"""

import os
import subprocess
import sys
from typing import Callable

from benchkit.peer_process import PeerProcess
from tskit.declaration import REPO

PACKAGE = "llama-cpp-python[server]==0.3.36"
VENV = os.path.join(REPO, "build", "peers", "llamacpp")
PYTHON = os.path.join(VENV, "bin", "python")


def built() -> bool:
    return os.path.exists(PYTHON) and subprocess.run([PYTHON, "-c", "import llama_cpp.server"],
                                                     capture_output=True).returncode == 0


def ensure_built(log: Callable[[str], None]) -> str:
    """The venv's python with llama-cpp-python's server importable, built now if it is not."""
    if built():
        return PYTHON
    log(f"(P) building {PACKAGE} from source into {VENV} (once; ~15 minutes on 2 cores)")
    if not os.path.exists(PYTHON):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([PYTHON, "-m", "pip", "install", "-q", PACKAGE], check=True)
    return PYTHON


class LlamaCppPeer(PeerProcess):
    def __init__(self, gguf: str, port: int, threads: int, log_path: str, context: int = 4096):
        super().__init__("llama.cpp server", [PYTHON, "-m", "llama_cpp.server", "--model", gguf, "--host",
                                              "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
                                              "--n_threads_batch", str(threads), "--n_ctx", str(context),
                                              # queue concurrent requests (its default: a new one cuts the running one off)
                                              "--interrupt_requests", "False"],
                         f"http://127.0.0.1:{port}/v1/models", log_path)
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
