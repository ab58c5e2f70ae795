"""Diffill's engine side: model, sampler, engine, websocket server, training code.

One process-wide default is set here, before torch can be imported through this package: MKL's own
thread pool makes the small matrix products of a denoising pass slower, not faster, so MKL runs on one
thread and the engine's worker sizes torch's OpenMP pool itself (fim_server/engine.py). Measured with
bench/engine_latency.py on 2 CPU cores: with MKL on two threads a pass took ~10 ms; now ~3 ms.
An MKL_NUM_THREADS already in the environment wins.
"""

import os

os.environ.setdefault("MKL_NUM_THREADS", "1")
