from pathlib import Path

from setuptools import find_packages, setup

requirements = [line.strip() for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

setup(
    name="strhub",
    version="1.0.0",
    description="CLIP4STR: scene text recognition with a pre-trained vision-language model",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8")
    if Path(__file__).with_name("README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",  # the versions the tests ran on (docs/tests.md, Python versions)
    # configs/ stays at the top of the source tree, where users edit it; a wheel carries it as strhub/configs
    # (strhub.config finds either), with render_words' own fonts and their licences.
    packages=find_packages(include=["strhub", "strhub.*"]) + ["strhub.configs"],
    package_dir={"strhub.configs": "configs"},
    package_data={"strhub.configs": ["*.yaml", "*/*.yaml"], "strhub.tools": ["fonts/*"],
                  "strhub.hub": ["released.yaml"]},
    install_requires=requirements,
    # onnx writes the graphs of export.py, onnxruntime runs them (onnxruntime-gpu instead for CUDA);
    # multilingual: a Hugging Face text tower for CLIP4STR's cross-modal branch (model.text_tower);
    # mlflow, wandb: the experiment trackers of logger=mlflow / logger=wandb; tune: tune.py's search (Ray Tune, Optuna);
    # demo: the web page of strhub-demo (the tests drive it in headless Chromium with selenium).
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3.5", "ruff>=0.6", "selenium>=4.20", "hypothesis>=6.100"],
                    "demo": ["gradio>=5.0,<7"],
                    "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
                    "multilingual": ["transformers>=5.0,<6", "tokenizers>=0.22"],
                    "mlflow": ["mlflow>=2.16"], "wandb": ["wandb>=0.18"], "tune": ["ray[tune]>=2.43", "optuna>=4.0"]},
    entry_points={"console_scripts": [
        "strhub-train = strhub.app.train:cli",
        "strhub-test = strhub.app.test:main",
        "strhub-read = strhub.app.read:main",
        "strhub-export = strhub.app.export:main",
        "strhub-explain = strhub.app.explain:main",
        "strhub-bench = strhub.app.bench:main",
        "strhub-demo = strhub.app.demo:main",
        "strhub-build-charset = strhub.tools.build_charset:main",
        "strhub-create-lmdb = strhub.tools.create_lmdb:main",
        "strhub-inspect-lmdb = strhub.tools.inspect_lmdb:main",
        "strhub-render-words = strhub.tools.render_words:main",
        "strhub-filter-lmdb = strhub.tools.filter_lmdb:main",
        "strhub-build-dataset = strhub.tools.build_dataset:main",
        "strhub-compare-runs = strhub.tools.compare_runs:main",
        "strhub-tune = strhub.app.tune:main",
        "strhub-convert-icdar = strhub.tools.convert.icdar:main",
        "strhub-convert-cocotext = strhub.tools.convert.cocotext:main",
        "strhub-convert-textocr = strhub.tools.convert.textocr:main",
        "strhub-convert-art = strhub.tools.convert.art:main",
        "strhub-convert-lsvt = strhub.tools.convert.lsvt:main",
        "strhub-convert-mlt19 = strhub.tools.convert.mlt19:main",
        "strhub-convert-union14m = strhub.tools.convert.union14m:main",
        "strhub-convert-case-sensitive = strhub.tools.convert.case_sensitive:main",
    ]},
)
