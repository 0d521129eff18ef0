"""Pieces of `make bench` (scripts/bench.py): variant archives per format, agreement with fp32 from
served answers, the whole job in process (J) and the raw model (C), and a LitServe peer (L)."""
