#!/usr/bin/env python3
"""Attention maps: `python explain.py CHECKPOINT IMAGES --out DIR`, as `strhub-explain` (strhub/app/explain.py)."""
from strhub.app.explain import main

if __name__ == "__main__":
    main()
