"""Install: pip install -e .   (extras: [test], [onnx])"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "mobilevision" / "version.py").read_text(), version)

# ONNX export (tf2onnx) and inference (onnxruntime). tf2onnx 1.16 pins protobuf~=3.20, which
# pip would install over TensorFlow 2.21's protobuf>=6.31.1 and break it; 1.17 accepts it.
# Tested: tf2onnx 1.17.0, onnx 1.23.2, onnxruntime 1.32.0 with TF 2.21, protobuf 7, numpy 2.4.
ONNX = ["tf2onnx>=1.17", "onnx>=1.17", "onnxruntime>=1.19"]

setup(
    name="mobilevision",
    version=version["__version__"],
    description="MobileNetV2 backbone with classifier, SSDLite and DeepLabv3 heads, in Keras 3",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mobilevision", "mobilevision.*"]),
    # The TFLite Metadata schemas (Apache-2.0) the bindings in export/schema/ are generated from,
    # and the web page's static files (export/web: the page, its script and stylesheet).
    package_data={"mobilevision.export.schema": ["*.fbs"],
                  "mobilevision.export.web": ["index.html", "app.js", "style.css"]},
    # The bundled YAML configs are installed beside the package so `--config NAME.yaml`
    # finds them from any working directory, also in a non-editable install.
    data_files=[("share/mobilevision/configs", sorted(str(p) for p in Path("configs").glob("*.yaml")))],
    install_requires=[
        "tensorflow>=2.16",
        "tensorboard>=2.16",
        "keras>=3.3",
        "pycocotools>=2.0.7",
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # tensorflow-datasets needs it for local (adhoc) datasets
        "opencv-python-headless>=4.8",
        "pyyaml>=6.0",
        "ai-edge-litert>=1.0",
        "flatbuffers>=2.0",  # TFLite Metadata (export/metadata.py; flatc 2.0.8 bindings)
        "pillow>=10.0",
        "h5py>=3.8",
        "matplotlib>=3.7",
        "numpy>=1.24",
    ],
    extras_require={"onnx": ONNX, "test": ["pytest>=7.4", "pytest-xdist>=3.8", *ONNX]},
    entry_points={"console_scripts": ["mobilevision=mobilevision.cli:main"]},
)
