"""The command-line programs (issue 23 moves the root scripts here): demo.py serves the web demo."""
