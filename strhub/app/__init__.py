"""The commands (their main functions): tune.py."""
