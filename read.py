#!/usr/bin/env python3
"""Reads word images: `python read.py CHECKPOINT IMAGES...`, as `strhub-read` (strhub/app/read.py)."""
from strhub.app.read import main

if __name__ == "__main__":
    main()
