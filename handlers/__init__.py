"""The runtime: what a TorchServe worker runs, and nothing else (no import from scripts/).

One thin handler class per kind (`*_handler.py`, each an archive's entry point) over pure modules that import
nothing from `ts`: decoding, protocols, budgets, settings, the kinds' own steps. Every archive carries this
package whole as `handlers/` beside its entry module (scripts/tskit/archive.py), so a module is imported as
`handlers.<module>` in a worker, in the tools and in the tests alike.
"""
