"""A peer server in a subprocess of its own session, ready when its health URL answers 200; stopped by pid (it
and its children), never by name. LitServe and llama.cpp's server run through it."""

import shutil
import subprocess
import time
from typing import List, Optional

import psutil
import requests


class PeerProcess:
    def __init__(self, name: str, command: List[str], health_url: str, log_path: str, scratch: str = None):
        """`scratch`: a folder the peer works in, removed when it stops."""
        self.name, self.command, self.health_url, self.log_path = name, command, health_url, log_path
        self.scratch = scratch
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 300) -> None:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}); log: {self.log_path}\n"
                                   + self.log_tail())
            try:
                if requests.get(self.health_url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not healthy after {timeout:.0f} s; log: {self.log_path}\n" + self.log_tail())

    def log_tail(self, lines: int = 20) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        if self.process is None:
            return
        try:
            family = [psutil.Process(self.process.pid)] + psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            family = []
        for proc in family:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for proc in alive:  # only the processes this peer started, by pid
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.process.wait(timeout=timeout)
        self._log.close()
        self.process = None
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
