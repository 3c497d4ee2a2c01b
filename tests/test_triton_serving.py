"""Serving through a real Triton Inference Server (docs/serving.md): the export, and the
``tritonserver`` of the nvidia-pytriton wheel started on free 127.0.0.1 ports by a fixture.

Server tests skip only when tritonserver cannot start on the machine (and fail instead in CI,
which installs it from requirements/tritonserver.txt). The tiny 64² engine keeps the file to a few minutes.
"""
from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import cdd_engine
from cdd_engine.errors import EngineFormatError
from cdd_engine.serving import export_triton
from cdd_engine.serving.requests import frame_problem
from engine_helpers import (copy_engine, engine_dir, frames, one_torch_thread,  # noqa: F401 (autouse fixture)
                            tiny_model)
from triton_fixtures import infer, start_server

MODEL = "cdd"
TESTS = Path(__file__).resolve().parent
RTOL = 1e-5


# ------------------------------------------------------------------ export (no server)
def test_export_writes_a_self_contained_versioned_repository(tmp_path):
    src = engine_dir("openvino")
    model_dir = export_triton(src, tmp_path / "repo", name=MODEL, instances=2, max_queue_delay_us=500)
    assert model_dir == tmp_path / "repo" / MODEL
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]
    assert (model_dir / "1" / "model.py").read_text() == (Path(cdd_engine.__file__).parent / "serving" /
                                                          "model.py").read_text()
    copy = model_dir / "1" / "engine"
    assert not copy.is_symlink()
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in src.iterdir())
    assert cdd_engine.load(copy).manifest["files"] == cdd_engine.load(src).manifest["files"]
    cfg = (model_dir / "config.pbtxt").read_text()
    for line in ('name: "cdd"', 'backend: "python"', "max_batch_size: 64", "dims: [ -1, -1, 3 ]",
                 "allow_ragged_batch: true", "instance_group [ { count: 2 kind: KIND_CPU } ]",
                 "dynamic_batching { max_queue_delay_microseconds: 500 }",
                 '{ key: "threshold" value: { string_value: "0.75" } }',
                 '{ name: "MAP" data_type: TYPE_FP32 dims: [ 64, 64 ] }'):
        assert line in cfg, line


def test_export_refuses_an_existing_version_and_bad_settings(tmp_path):
    src = engine_dir("openvino")
    repo = tmp_path / "repo"
    export_triton(src, repo, name=MODEL)
    with pytest.raises(FileExistsError, match="--version"):
        export_triton(src, repo, name=MODEL)
    export_triton(src, repo, name=MODEL, force=True, threshold=1.5)
    assert 'string_value: "1.5"' in (repo / MODEL / "config.pbtxt").read_text()
    for bad in (dict(instances=0), dict(max_queue_delay_us=-1), dict(version=0), dict(name="a/b"),
                dict(kind="gpu"), dict(pixel_format="BGRA"), dict(threshold=float("nan")), dict(max_batch_size=0)):
        with pytest.raises(ValueError):
            export_triton(src, repo, **{"name": MODEL, "version": 7, **bad})
    assert not (repo / MODEL / "7").exists()


def test_export_refuses_a_damaged_engine_and_writes_nothing(tmp_path):
    bad = copy_engine("openvino", tmp_path / "bad")
    (bad / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(EngineFormatError):
        export_triton(bad, tmp_path / "repo", name=MODEL)
    assert not (tmp_path / "repo").exists()


def test_cli_export_triton(tmp_path):
    from cdd_engine.cli import main

    out = tmp_path / "repo"
    assert main(["export-triton", "--engine", str(engine_dir("openvino")), "--out", str(out), "--name", "line7",
                 "--instances", "3", "--max-queue-delay-us", "100", "--version", "4"]) == 0
    cfg = (out / "line7" / "config.pbtxt").read_text()
    assert "count: 3 kind: KIND_CPU" in cfg and "max_queue_delay_microseconds: 100" in cfg
    assert (out / "line7" / "4" / "engine" / "engine.json").is_file()
    assert main(["export-triton", "--engine", str(engine_dir("openvino")), "--out", str(out), "--name", "line7",
                 "--version", "4"]) == 2  # exists: one clear line, exit status 2


@pytest.mark.parametrize("shape,dtype,want", [
    ((2, 64, 64, 3), "uint8", None),
    ((2, 64, 64, 3), "float32", "UINT8"),
    ((64, 64, 3), "uint8", "(batch, height, width, channels)"),
    ((1, 0, 64, 3), "uint8", "zero-sized"),
    ((0, 64, 64, 3), "uint8", "zero-sized"),
    ((1, 64, 64, 4), "uint8", "3 channel"),
    ((1, 4097, 8, 3), "uint8", "max_frame_side = 4096"),
])
def test_frame_problem(shape, dtype, want):
    got = frame_problem(shape, dtype, channels=3, max_side=4096)
    assert got is None if want is None else want in got


# ------------------------------------------------------------------ the real server
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, engine) with version 1 = the tiny OpenVINO engine; stopped at the end."""
    root = tmp_path_factory.mktemp("triton")
    src = engine_dir("openvino")
    export_triton(src, root / "repo", name=MODEL, max_queue_delay_us=2000)
    server = start_server(root / "repo", root / "work", [MODEL])
    try:
        yield server, cdd_engine.load(src)
    finally:
        server.stop()


def _frames_of_sizes(sizes, seed):
    return [frames(n, h, w, seed=seed + i) for i, (n, h, w) in enumerate(sizes)]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_results_equal_engine_score(served, protocol):
    server, engine = served
    url = server.http_url if protocol == "http" else server.grpc_url
    for batch in _frames_of_sizes([(4, 64, 64), (2, 37, 101), (1, 120, 90)], seed=10):
        want = engine.score(batch)
        out, _, returned = infer(protocol, url, MODEL, batch, want_map=True)
        np.testing.assert_allclose(out["SCORE"].reshape(-1), want.scores, rtol=RTOL)
        np.testing.assert_array_equal(out["IS_ANOMALOUS"].reshape(-1), want.is_anomalous)
        np.testing.assert_allclose(out["THRESHOLD"].reshape(-1), np.full(len(batch), engine.threshold), rtol=RTOL)
        np.testing.assert_allclose(out["MAP"], want.maps, rtol=RTOL, atol=RTOL * float(np.abs(want.maps).max()))
        assert out["SCORE"].dtype == np.float32 and out["IS_ANOMALOUS"].dtype == np.bool_
        # clients that ask only for verdicts get no map
        out, _, returned = infer(protocol, url, MODEL, batch, want_map=False)
        assert sorted(returned) == ["IS_ANOMALOUS", "SCORE", "THRESHOLD"]
        np.testing.assert_allclose(out["SCORE"].reshape(-1), want.scores, rtol=RTOL)


N_CLIENTS, N_REQUESTS = 8, 100
BATCH_PATTERN = (1, 2, 1, 3, 1, 1, 4, 1, 2, 1)


def _load_plan(engine):
    """Per client: requests of mixed batch sizes (and a second frame size every 7th request), each
    frame unique, with the in-process Engine.score answers (scores do not depend on how frames
    are batched). Frames whose scores collide exactly are replaced, so a score names its frame."""
    plans = []
    seed = 1000
    for c in range(N_CLIENTS):
        counts = np.array([BATCH_PATTERN[(r + c) % len(BATCH_PATTERN)] for r in range(N_REQUESTS)])
        shapes = np.array([(48, 80) if r % 7 == 3 else (64, 64) for r in range(N_REQUESTS)])
        batches = []
        for n, (h, w) in zip(counts, shapes):
            batches.append(frames(int(n), int(h), int(w), seed=seed))
            seed += 1
        plans.append({"counts": counts, "shapes": shapes, "batches": batches,
                      "want_map": np.array([r % 10 == 5 for r in range(N_REQUESTS)])})
    # expected answers: all frames of one size in one in-process call
    for h, w in ((64, 64), (48, 80)):
        idx = [(c, r) for c, p in enumerate(plans) for r in range(N_REQUESTS) if tuple(p["shapes"][r]) == (h, w)]
        stack = np.concatenate([plans[c]["batches"][r] for c, r in idx])
        res = engine.score(stack)
        off = 0
        for c, r in idx:
            n = int(plans[c]["counts"][r])
            plans[c].setdefault("want", {})[r] = (res.scores[off:off + n], res.is_anomalous[off:off + n],
                                                  res.maps[off:off + n])
            off += n
    while True:  # float32 scores of ~1400 frames collide now and then: such a request gets new frames
        where = [(c, r) for c in range(N_CLIENTS) for r in range(N_REQUESTS) for _ in plans[c]["want"][r][0]]
        scores = np.concatenate([plans[c]["want"][r][0] for c in range(N_CLIENTS) for r in range(N_REQUESTS)])
        _, first, counts = np.unique(scores, return_index=True, return_counts=True)
        unique = set(first[counts == 1].tolist())
        dup = sorted({where[i] for i in range(len(scores)) if i not in unique})
        if not dup:
            return plans
        for c, r in dup[1:] if len(dup) > 1 else dup:
            h, w = plans[c]["shapes"][r]
            plans[c]["batches"][r] = batch = frames(int(plans[c]["counts"][r]), int(h), int(w), seed=seed)
            seed += 1
            res = engine.score(batch)
            plans[c]["want"][r] = (res.scores, res.is_anomalous, res.maps)


def test_under_load_every_request_gets_its_own_answer_and_requests_are_batched(served, tmp_path):
    server, engine = served
    plans = _load_plan(engine)
    all_scores = np.concatenate([plans[c]["want"][r][0] for c in range(N_CLIENTS) for r in range(N_REQUESTS)])
    assert len(np.unique(all_scores)) == len(all_scores), "two test frames share a score: pick other seeds"
    owner = np.argsort(all_scores)
    sorted_scores = all_scores[owner]

    from tritonclient.http import InferenceServerClient
    stats_client = InferenceServerClient(server.http_url)

    def stats():
        s = stats_client.get_inference_statistics(MODEL)["model_stats"][0]
        return int(s["inference_stats"]["success"]["count"]), int(s["execution_count"]), int(s["inference_count"])

    before = stats()
    procs = []
    for c, p in enumerate(plans):
        flat = np.concatenate([b.reshape(-1) for b in p["batches"]])
        starts = np.cumsum([0] + [b.size for b in p["batches"]][:-1])
        np.savez(tmp_path / f"in{c}.npz", frames_flat=flat, starts=starts, counts=p["counts"], shapes=p["shapes"],
                 want_map=p["want_map"])
        protocol, url = ("http", server.http_url) if c % 2 == 0 else ("grpc", server.grpc_url)
        procs.append(subprocess.Popen([sys.executable, "-m", "triton_fixtures", str(tmp_path / f"in{c}.npz"),
                                       str(tmp_path / f"out{c}.npz"), protocol, url, MODEL, f"c{c}"], cwd=TESTS))
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    after = stats()

    frame_no = 0
    for c, p in enumerate(plans):
        got = np.load(tmp_path / f"out{c}.npz")
        assert list(got["errors"]) == [] and got["ok"].all(), f"client {c}: {list(got['errors'])[:3]}"
        assert got["ids_ok"].all(), f"client {c}: a response carried another request's id"
        off = 0
        for r in range(N_REQUESTS):
            n = int(p["counts"][r])
            want_s, want_v, want_m = p["want"][r]
            s = got["scores"][off:off + n]
            np.testing.assert_allclose(s, want_s, rtol=RTOL, err_msg=f"client {c} request {r}")
            # the nearest expected score belongs to this very frame (not to another request's)
            near = np.clip(np.searchsorted(sorted_scores, s), 1, len(sorted_scores) - 1)
            near = np.where(np.abs(sorted_scores[near - 1] - s) <= np.abs(sorted_scores[near] - s), near - 1, near)
            np.testing.assert_array_equal(owner[near], np.arange(frame_no, frame_no + n),
                                          err_msg=f"client {c} request {r}: answered with another frame's score")
            np.testing.assert_array_equal(got["verdicts"][off:off + n], want_v)
            np.testing.assert_allclose(got["thresholds"][off:off + n], engine.threshold, rtol=RTOL)
            if p["want_map"][r]:
                np.testing.assert_allclose(got[f"map_{r}"], want_m, rtol=RTOL, atol=RTOL * float(np.abs(want_m).max()))
            else:
                assert f"map_{r}" not in got.files
            off += n
            frame_no += n
    requests = after[0] - before[0]
    executions = after[1] - before[1]
    assert requests == N_CLIENTS * N_REQUESTS  # none lost, none counted twice
    assert after[2] - before[2] == frame_no
    assert executions < requests, f"no dynamic batching: {executions} executions for {requests} requests"
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        metrics = r.read().decode()
    assert f'nv_inference_exec_count{{model="{MODEL}",version="1"}}' in metrics


@pytest.mark.parametrize("case", ["float frames", "no batch dimension", "zero-sized", "empty batch",
                                  "four channels", "oversized"])
def test_bad_request_gets_an_error_and_the_next_good_one_is_served(served, case):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    server, engine = served
    good = frames(2, 64, 64, seed=77)
    bad, dtype, match = {
        "float frames": (good.astype(np.float32), "FP32", "UINT8"),  # refused by Triton against config.pbtxt
        "no batch dimension": (good[0], "UINT8", "shape"),
        "zero-sized": (np.zeros((1, 0, 64, 3), np.uint8), "UINT8", "zero-sized"),  # refused by model.py
        "empty batch": (np.zeros((0, 64, 64, 3), np.uint8), "UINT8", "FRAMES"),
        "four channels": (np.zeros((1, 64, 64, 4), np.uint8), "UINT8", "shape"),
        "oversized": (np.full((1, 4097, 4, 3), 7, np.uint8), "UINT8", "max_frame_side"),
    }[case]
    c = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("FRAMES", list(bad.shape), dtype)
    inp.set_data_from_numpy(bad)
    with pytest.raises(InferenceServerException, match=match):
        c.infer(MODEL, [inp])
    out, _, _ = infer("http", server.http_url, MODEL, good)
    np.testing.assert_allclose(out["SCORE"].reshape(-1), engine.score(good).scores, rtol=RTOL)


def test_bad_and_good_requests_batched_together(served):
    """Concurrent requests, some bad: each bad one gets its own error, each good one its answer."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    server, engine = served
    c = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    goods = [frames(1 + i % 3, 64, 64, seed=300 + i) for i in range(6)]
    pending = []
    for i, g in enumerate(goods):
        bad = np.zeros((1, 4097, 2, 3), np.uint8)
        for arr, is_good in ((g, True), (bad, False)):
            inp = httpclient.InferInput("FRAMES", list(arr.shape), "UINT8")
            inp.set_data_from_numpy(arr)
            pending.append((c.async_infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("SCORE")]),
                            is_good, arr))
    for req, is_good, arr in pending:
        if is_good:
            np.testing.assert_allclose(req.get_result().as_numpy("SCORE").reshape(-1), engine.score(arr).scores,
                                       rtol=RTOL)
        else:
            with pytest.raises(InferenceServerException, match="max_frame_side"):
                req.get_result()
    c.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_example(served, tmp_path, capsys, protocol):
    from PIL import Image

    from cdd_engine.serving import client_example

    server, engine = served
    frame = frames(1, 50, 70, seed=9)[0]
    Image.fromarray(frame).save(tmp_path / "part.png")
    url = server.http_url if protocol == "http" else server.grpc_url
    assert client_example.main([str(tmp_path / "part.png"), "--url", url, "--protocol", protocol, "--model", MODEL,
                                "--maps", str(tmp_path / "maps")]) == 0
    want = engine.score(frame[None])
    path, score, verdict, _ = capsys.readouterr().out.strip().split("\t")
    assert path.endswith("part.png") and abs(float(score) - want.scores[0]) <= 1e-5 * want.scores[0]
    assert verdict == ("ANOMALOUS" if want.is_anomalous[0] else "normal")
    np.testing.assert_allclose(np.load(tmp_path / "maps" / "part.npy"), want.maps[0], rtol=RTOL, atol=1e-6)


def test_restart_with_a_new_version_serves_the_new_engine(served, tmp_path):
    """Roll-out: version 2 (another model, another threshold) exported beside version 1; after a
    restart the server serves version 2 only."""
    import tritonclient.http as httpclient

    server, old = served
    new = cdd_engine.build(tiny_model(seed=1), backend="torch", threshold=0.5, max_batch=4,
                           output_dir=tmp_path / "engine_v2")
    export_triton(new.engine_dir, server.repository, name=MODEL, version=2)
    server.stop()
    server.start()
    server.wait_ready([MODEL], 240)
    c = httpclient.InferenceServerClient(server.http_url)
    assert c.get_model_metadata(MODEL)["versions"] == ["2"]
    assert not c.is_model_ready(MODEL, "1")
    batch = frames(3, 64, 64, seed=5)
    out, _, _ = infer("http", server.http_url, MODEL, batch)
    want = new.score(batch)
    np.testing.assert_allclose(out["SCORE"].reshape(-1), want.scores, rtol=RTOL)
    assert np.abs(want.scores - old.score(batch).scores).min() > 1e-3  # really another engine
    np.testing.assert_array_equal(out["IS_ANOMALOUS"].reshape(-1), want.is_anomalous)
    np.testing.assert_allclose(out["THRESHOLD"].reshape(-1), 0.5)
    cfg = c.get_model_config(MODEL)
    assert cfg["parameters"]["threshold"]["string_value"] == "0.5"
