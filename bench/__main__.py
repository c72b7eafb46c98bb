"""python -m bench [--quick] [--out runs/bench] [--sections ...]   (make bench ARGS="...")"""
import os

# before anything imports tqdm / trl / transformers: no progress bars, no hub, no experimental-API banner
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from bench.run import main  # noqa: E402

raise SystemExit(main())
