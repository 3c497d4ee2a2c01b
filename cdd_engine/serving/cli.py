"""``cdd-engine export-triton``: registered by :mod:`cdd_engine.cli` (docs/serving.md)."""
from __future__ import annotations

import argparse

from ..cli_help import HelpFormatter
from .requests import CHANNELS, DEFAULT_MAX_FRAME_SIDE
from .triton_repo import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_DELAY_US, KINDS


def add_export_triton_parser(sub) -> None:
    p = sub.add_parser(
        "export-triton", formatter_class=HelpFormatter,
        help="export an engine as a Triton Inference Server model repository",
        description="Write a Triton model repository that serves an engine directory through cdd-engine's own "
                    "Engine (Python backend) with dynamic batching: MODEL_REPOSITORY/NAME/config.pbtxt and "
                    "MODEL_REPOSITORY/NAME/VERSION/{model.py, engine/}. Inputs: FRAMES uint8 (batch, height, "
                    "width, channels); outputs SCORE, IS_ANOMALOUS, THRESHOLD and, when requested, MAP.",
        epilog="examples:\n  cdd-engine export-triton --engine engines/bottle --out model_repository --name bottle\n"
               "  cdd-engine export-triton --engine engines/bottle_v2 --out model_repository --name bottle "
               "--version 2\n  tritonserver --model-repository model_repository   (see docs/serving.md)")
    p.add_argument("--engine", required=True, metavar="ENGINE_DIR", help="engine directory (cdd-engine build)")
    p.add_argument("--out", required=True, metavar="MODEL_REPOSITORY", help="model repository to write into")
    p.add_argument("--name", default="cdd_engine", help="model name")
    p.add_argument("--version", type=int, default=1, metavar="V", help="version directory to add")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances")
    p.add_argument("--kind", default="auto", choices=KINDS,
                   help="instance kind: auto = GPU for TensorRT engines, CPU otherwise")
    p.add_argument("--max-queue-delay-us", type=int, default=DEFAULT_MAX_QUEUE_DELAY_US, metavar="T",
                   help="dynamic batcher: how long to wait to fill a batch")
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, metavar="N",
                   help="most frames per execution and per request")
    p.add_argument("--threshold", type=float, default=None, metavar="T", help="override the engine's threshold")
    p.add_argument("--pixel-format", default="RGB", choices=tuple(CHANNELS), help="how clients send frames")
    p.add_argument("--max-frame-side", type=int, default=DEFAULT_MAX_FRAME_SIDE, metavar="PX",
                   help="frames with a larger height or width get an error response")
    p.add_argument("--num-threads", type=int, default=0, metavar="N",
                   help="inference threads per instance (0: the runtime's default)")
    p.add_argument("--force", action="store_true", help="replace an existing version directory")
    p.set_defaults(handler=run_export_triton)


def run_export_triton(a: argparse.Namespace) -> int:
    from .triton_repo import export_triton

    model_dir = export_triton(a.engine, a.out, name=a.name, instances=a.instances,
                              max_queue_delay_us=a.max_queue_delay_us, version=a.version, kind=a.kind,
                              max_batch_size=a.max_batch_size, threshold=a.threshold, pixel_format=a.pixel_format,
                              max_frame_side=a.max_frame_side, num_threads=a.num_threads, force=a.force)
    print(f"model repository: {model_dir.parent}")
    print(f"  model {a.name!r} version {a.version}: {model_dir / str(a.version)}")
    print(f"  serve with: tritonserver --model-repository {model_dir.parent}   (docs/serving.md)")
    return 0
