"""`python -m bench SUBCOMMAND [options]`: one entry point for the benchmark programs (each also runs alone).

Subcommands: humaneval-infill, latency (language server and websocket: cold, warm, single- and
multi-line), typing (the same run, which includes the typing replay), engine, load, frontier, edits, faults,
new-lines, http-overhead, model-shapes.
`python -m bench SUBCOMMAND --help` lists each one's options. Results land in bench/results/ (see bench/RESULTS.md).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "humaneval-infill": "bench.humaneval_infill",
    "latency": "bench.lsp_latency",
    "typing": "bench.lsp_latency",
    "engine": "bench.engine_latency",
    "load": "bench.load",
    "frontier": "bench.frontier",
    "edits": "bench.edit_holes",
    "new-lines": "bench.new_lines",
    "faults": "bench.faults",
    "http-overhead": "bench.http_overhead",
    "model-shapes": "bench.model_shapes",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]])
    sys.argv = [f"bench {argv[0]}", *argv[1:]]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
