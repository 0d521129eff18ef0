"""Java .properties, as TorchServe reads config.properties: one parser for the server, its tools and checks."""

from typing import Dict


def parse_properties(text: str) -> Dict[str, str]:
    """`key=value` lines, `\\` line continuations joined, `#` / `!` comments and blank lines skipped."""
    props, pending = {}, ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", "!"))):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip().replace("\\\\", "\\")
    return props


def read_properties(path: str) -> Dict[str, str]:
    with open(path, encoding="utf-8") as f:
        return parse_properties(f.read())


def write_properties(props: Dict[str, str], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for key, value in props.items():
            f.write(f"{key}={value.replace(chr(92), chr(92) * 2)}\n")
