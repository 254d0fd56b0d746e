"""Deployment: ONNX export (`strhub.deploy.export`, `export.py`) and reading with ONNX Runtime (`OnnxReader`).
Needs the onnx extra: pip install -e ".[onnx]"."""
from strhub.deploy.runtime import OnnxReader

__all__ = ["OnnxReader"]
