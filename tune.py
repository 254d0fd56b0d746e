#!/usr/bin/env python3
"""Hyper-parameter search with Ray Tune (strhub/app/tune.py; configs/tune.yaml), e.g.

    python tune.py +experiment=vl4str data.root_dir=/data tune.num_samples=16 tune.gpus_per_trial=1
"""
from strhub.app.tune import main

if __name__ == "__main__":
    main()
