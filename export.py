#!/usr/bin/env python3
"""ONNX export: `python export.py CHECKPOINT --out DIR`, as `strhub-export` (strhub/app/export.py)."""
from strhub.app.export import main

if __name__ == "__main__":
    main()
