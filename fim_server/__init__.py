"""Diffill's engine side: model, sampler, engine, websocket server, training code.

One process-wide default is set here, before torch can be imported through this package: MKL's own
thread pool makes the small matrix products of a denoising pass slower, not faster. Measured on 2 CPU
cores with the default model (bench/engine_latency.py, 20 cases): a pass took ~10 ms with MKL on two
threads and ~5 ms on one; typing-path p50 went from 60 ms to 27 ms and cold p50 from 99 ms to 57 ms.
An MKL_NUM_THREADS already in the environment wins.
"""

import os

os.environ.setdefault("MKL_NUM_THREADS", "1")
