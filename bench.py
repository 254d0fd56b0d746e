#!/usr/bin/env python3
"""Benchmarks: `python bench.py [flops|memory|speed|onnx|data] ...`, as `strhub-bench` (strhub/app/bench/)."""
from strhub.app.bench import main

if __name__ == "__main__":
    main()
