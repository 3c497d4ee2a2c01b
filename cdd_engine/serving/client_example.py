"""A Python client of a model exported with ``cdd-engine export-triton`` (docs/serving.md).

    python -m cdd_engine.serving.client_example --url 127.0.0.1:8000 --model bottle img1.png img2.png
    python -m cdd_engine.serving.client_example --url 127.0.0.1:8001 --protocol grpc --model bottle --maps out/ *.png

Sends each image as a batch of one uint8 (1, H, W, 3) RGB frame (frames of the same size could
share one request: stack them along dimension 0) and prints its score and verdict. Maps are
asked for only with ``--maps`` (MAP is an optional output: verdict-only clients do not pay for
it); they are written as .npy files (model resolution, float32). Needs ``tritonclient[http,grpc]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def score_frames(url: str, model: str, frames: np.ndarray, protocol: str = "http", want_map: bool = False,
                 timeout_s: float = 60.0) -> dict[str, np.ndarray]:
    """(N, H, W, 3) uint8 RGB frames -> {"SCORE": (N,), "IS_ANOMALOUS": (N,), "THRESHOLD": (N,)
    [, "MAP": (N, h, w)]}. Raises tritonclient's InferenceServerException on an error response."""
    if protocol == "http":
        import tritonclient.http as client
        conn = client.InferenceServerClient(url, network_timeout=timeout_s, connection_timeout=timeout_s)
        kwargs = {}
    else:
        import tritonclient.grpc as client
        conn = client.InferenceServerClient(url)
        kwargs = {"client_timeout": timeout_s}
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    inp = client.InferInput("FRAMES", list(frames.shape), "UINT8")
    inp.set_data_from_numpy(frames)
    names = ["SCORE", "IS_ANOMALOUS", "THRESHOLD"] + (["MAP"] if want_map else [])
    try:
        result = conn.infer(model, [inp], outputs=[client.InferRequestedOutput(n) for n in names], **kwargs)
    finally:
        conn.close()
    out = {n: result.as_numpy(n) for n in names}
    return {n: (a if n == "MAP" else a.reshape(-1)) for n, a in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files (any size up to the model's max_frame_side)")
    ap.add_argument("--url", default="127.0.0.1:8000", help="HOST:PORT (HTTP 8000, gRPC 8001 by default)")
    ap.add_argument("--protocol", default="http", choices=("http", "grpc"))
    ap.add_argument("--model", default="cdd_engine")
    ap.add_argument("--maps", default=None, metavar="DIR", help="also fetch the anomaly maps, as DIR/<image>.npy")
    a = ap.parse_args(argv)
    for path in a.images:
        with Image.open(path) as im:
            frame = np.asarray(im.convert("RGB"))
        out = score_frames(a.url, a.model, frame[None], a.protocol, want_map=a.maps is not None)
        verdict = "ANOMALOUS" if out["IS_ANOMALOUS"][0] else "normal"
        print(f"{path}\t{out['SCORE'][0]:.6g}\t{verdict}\t(threshold {out['THRESHOLD'][0]:.6g})")
        if a.maps is not None:
            Path(a.maps).mkdir(parents=True, exist_ok=True)
            np.save(Path(a.maps) / f"{Path(path).stem}.npy", out["MAP"][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
