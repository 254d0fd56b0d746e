"""Converters from the published annotation formats of scene-text datasets to STR LMDBs, one module per format
(`python -m strhub.tools.convert.<format> --help`), sharing `core`."""
