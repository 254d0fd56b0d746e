"""Command-line tools for making and inspecting scene-text datasets."""
