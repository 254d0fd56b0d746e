#!/usr/bin/env python3
"""Trains a model: `python train.py +experiment=vl4str ...`, as `strhub-train` (strhub/app/train.py)."""
from strhub.app.train import cli

if __name__ == "__main__":
    cli()
