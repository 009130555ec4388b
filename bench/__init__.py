"""The benchmark suite: `python -m bench` (or `make bench`) runs every figure beside a named peer.

Modules: `bench.bench_tokenizer` (BPE training and encoding) and `bench.bench_model` (LM training step and
generation), each with `run(quick: bool = False) -> list[dict]`; `bench.common` holds the shared pieces.
"""
