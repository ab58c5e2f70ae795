"""Torch-free code that both the engine (fim_server) and the language server (lsp) import: the wire types and
their codec (`protocol`), the one error hierarchy (`errors`), tree-sitter syntax checks (`syntax`), language
ids (`languages`) and where the shipped model lives (`paths`).

Contract: nothing under this package imports torch, pygls or anything else of fim_server beyond this package
(tests/test_layering.py checks it), so `diffill --help` and a language server talking to a remote engine stay
light.
"""
