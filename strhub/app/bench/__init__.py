"""`bench.py MODE ...` (`strhub-bench`): one command for the benchmarks.

    bench.py [flops] +experiment=X ...   parameters, FLOPs, latency and throughput (Hydra overrides; configs/bench.yaml)
    bench.py memory +experiment=X ...    the memory of a training step per GPU (the same as flops with memory=true)
    bench.py speed [--experiment X] ...  inference and training speed, the encoder's share (fresh processes)
    bench.py onnx [--experiment X] ...   PyTorch against ONNX Runtime on the same weights
    bench.py data [--data LMDB] ...      data-loading throughput per number of workers
"""
import importlib
import sys
from typing import List, Optional

MODES = ("flops", "memory", "speed", "onnx", "data")


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    mode = argv.pop(0) if argv and argv[0] in MODES else "flops"
    if mode in ("flops", "memory"):  # Hydra reads sys.argv
        sys.argv = [sys.argv[0], *argv, *(["memory=true"] if mode == "memory" else [])]
        importlib.import_module("strhub.app.bench.flops").cli()
    else:
        importlib.import_module(f"strhub.app.bench.{mode}").main(argv)
