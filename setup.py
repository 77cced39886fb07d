"""mtlrec: multi-task recommendation models on Keras 3 + TensorFlow."""

from setuptools import find_packages, setup

# The stack is pinned on purpose (docs/DESIGN.md, BUILD.md): tensorflow-io 0.37.1 is the
# newest release and loads only on TF 2.17.x; Keras 3 releases after 3.8
# expect a newer TensorFlow.
INSTALL_REQUIRES = [
    "tensorflow>=2.17.1,<2.18",
    "tensorflow-io==0.37.1",
    "keras>=3.5,<3.9",
    "numpy>=1.26,<2",
    "pandas>=2,<3",
    # Arrow's CSV reader: about twice pandas' parse rate in mtlrec-prepare.
    # Releases from 23 on (26 measured) require numpy 2, which TF 2.17 does not take.
    "pyarrow>=15,<23",
    "absl-py>=2",
    "keras-tuner[bayesian]>=1.4,<1.5",  # scipy: BayesianOptimization, the default tuner
    "google-crc32c>=1.5",
    "tqdm>=4.60",
    # TF Serving's request messages for the export's warm-up records (pure Python).
    "tensorflow-serving-api>=2.17.1,<2.18",
    # mtlrec-report's figures (headless Agg backend): PNGs a code host renders.
    "matplotlib>=3.8,<4",
]

EXTRAS = {
    # hypothesis: property-based fuzzing of prepare's CSV input (tests/test_fuzz_prepare.py)
    # pytest-xdist: the suite runs on 2 processes (pyproject addopts), 11 min instead of 17 on 2 cores
    "test": ["pytest>=8", "pytest-timeout>=2", "pytest-xdist>=3", "ruff>=0.6", "moto[server]>=5", "boto3>=1.34",
             "psutil>=5", "hypothesis>=6.100"],
    "gpu": ["tensorflow[and-cuda]>=2.17.1,<2.18"],
}

setup(
    name="mtlrec",
    version="0.1.0",
    description="Multi-task recommendation models (MMoE, PLE, ESMM, APLE, DLEN, ...) on Keras 3",
    python_requires=">=3.10,<3.13",
    # The offline jobs live in the top-level pipelines/ folder and install as mtlrec.pipelines: nothing
    # generic (a top-level "pipelines" package would collide with other distributions' own).
    packages=[*find_packages(include=["mtlrec", "mtlrec.*"]), "mtlrec.pipelines"],
    package_dir={"mtlrec.pipelines": "pipelines"},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "mtlrec-prepare=mtlrec.cli.prepare:entry_point",
            "mtlrec-train=mtlrec.cli.train:entry_point",
            "mtlrec-export=mtlrec.cli.export:entry_point",
            "mtlrec-predict=mtlrec.cli.predict:entry_point",
            "mtlrec-tune=mtlrec.cli.tune:entry_point",
            "mtlrec-report=mtlrec.cli.report:entry_point",
            "mtlrec-bench=mtlrec.cli.bench:entry_point",
            "mtlrec-launch=mtlrec.cli.launch:entry_point",
            "mtlrec-fuse=mtlrec.cli.fuse:entry_point",
        ]
    },
)
