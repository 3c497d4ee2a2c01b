"""Helpers of tests/test_triton_serving.py: a real ``tritonserver`` (from the nvidia-pytriton
wheel) started on free 127.0.0.1 ports for an exported repository, and the load-test client
that runs in separate processes (``python -m triton_fixtures IN.npz OUT.npz PROTOCOL URL MODEL``).

This module is imported by the client processes too, so it imports only numpy and tritonclient
at module level.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

STARTUP_TIMEOUT_S = 240.0  # model load compiles the OpenVINO network; the machine may be busy


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def start_server(repository, work_dir, models):
    """A started and ready LocalTritonServer, or pytest.skip when tritonserver cannot run on this
    machine (not installed / exits before it is live). In CI (CI=true) those are failures: .ci/run
    installs the server (requirements/tritonserver.txt), so a skip there would hide a broken install."""
    import pytest

    from cdd_engine.serving import LocalTritonServer, ServerUnavailable

    server = LocalTritonServer(repository, work_dir=work_dir)
    try:
        server.start()
        server.wait_live(STARTUP_TIMEOUT_S)
    except ServerUnavailable as e:
        server.stop()
        if in_ci():
            raise
        pytest.skip(f"tritonserver cannot start on this machine: {e}")
    try:
        server.wait_ready(models, STARTUP_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


def client(protocol: str, url: str):
    if protocol == "http":
        import tritonclient.http as mod
    else:
        import tritonclient.grpc as mod
    return mod, mod.InferenceServerClient(url)


def infer(protocol: str, url: str, model: str, frames: np.ndarray, want_map: bool = False,
          request_id: str = "", conn=None):
    """One request -> (dict output name -> array, response id). Raises InferenceServerException."""
    mod, c = conn if conn is not None else client(protocol, url)
    inp = mod.InferInput("FRAMES", list(frames.shape), "UINT8")
    inp.set_data_from_numpy(frames)
    names = ["SCORE", "IS_ANOMALOUS", "THRESHOLD"] + (["MAP"] if want_map else [])
    result = c.infer(model, [inp], outputs=[mod.InferRequestedOutput(n) for n in names], request_id=request_id)
    resp = result.get_response()
    rid = resp.get("id", "") if isinstance(resp, dict) else resp.id
    out = {n: result.as_numpy(n) for n in names}
    returned = [o["name"] for o in resp["outputs"]] if isinstance(resp, dict) else [o.name for o in resp.outputs]
    return out, rid, returned


def client_main(argv: list[str]) -> int:
    """Load-test client: sends its requests one after another (8 such processes run at once) and
    writes what came back per request: status, response id, scores, verdicts, thresholds, maps."""
    src, dst, protocol, url, model, tag = argv
    data = np.load(src)
    frames, starts, sizes, want_map = data["frames_flat"], data["starts"], data["counts"], data["want_map"]
    shapes = data["shapes"]
    conn = client(protocol, url)
    ok = np.zeros(len(starts), dtype=bool)
    ids_ok = np.zeros(len(starts), dtype=bool)
    scores = np.full(int(sizes.sum()), np.nan, dtype=np.float32)
    verdicts = np.zeros(int(sizes.sum()), dtype=bool)
    thresholds = np.full(int(sizes.sum()), np.nan, dtype=np.float32)
    maps = {}
    errors = []
    offset = 0
    for r, (start, n) in enumerate(zip(starts, sizes)):
        h, w = shapes[r]
        batch = frames[start:start + n * h * w * 3].reshape(n, h, w, 3)
        rid = f"{tag}-{r}"
        try:
            out, got_id, _ = infer(protocol, url, model, batch, bool(want_map[r]), rid, conn)
            ok[r] = True
            ids_ok[r] = got_id == rid
            scores[offset:offset + n] = out["SCORE"].reshape(-1)
            verdicts[offset:offset + n] = out["IS_ANOMALOUS"].reshape(-1)
            thresholds[offset:offset + n] = out["THRESHOLD"].reshape(-1)
            if want_map[r]:
                maps[f"map_{r}"] = out["MAP"]
        except Exception as e:  # noqa: BLE001 - recorded, the parent test fails on it
            errors.append(f"request {rid}: {e}")
        offset += n
    np.savez(dst, ok=ok, ids_ok=ids_ok, scores=scores, verdicts=verdicts, thresholds=thresholds,
             errors=np.array(errors, dtype=object).astype(str), **maps)
    return 0


if __name__ == "__main__":
    t0 = time.monotonic()
    sys.exit(client_main(sys.argv[1:]))
