"""Diffill's language server: inline completions (LSP 3.18) from the diffusion engine.

Contract: this package imports no torch; the in-process engine (fim_server) is imported and loaded only
by `backend.EmbeddedBackend.start`, off the event loop. Logs go to stderr, never stdout (stdout carries
the protocol on stdio).
"""
