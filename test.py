#!/usr/bin/env python3
"""Evaluates a checkpoint: `python test.py CHECKPOINT --data_root DATA`, as `strhub-test` (strhub/app/test.py)."""
from strhub.app.test import main

if __name__ == "__main__":
    main()
