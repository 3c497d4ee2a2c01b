"""Triton Python-backend model serving a cdd-engine engine directory (docs/serving.md).

export_triton copies this file to ``<repository>/<name>/<version>/model.py``; the engine copy
sits beside it in ``engine/``. Each model instance loads ``cdd_engine.load`` once in
``initialize``; ``execute`` gets the requests the dynamic batcher gathered, checks each one
(a bad request gets its own error response, the others are served), scores all frames of one
size in a single ``Engine.score`` call and sends every request exactly its own rows back.

Tensors cross the backend boundary through DLPack, not ``as_numpy``/``Tensor(name, array)``:
the Python backend stub's numpy bridge misreads arrays under numpy 2, DLPack works under both.
MAP is computed only for requests that ask for it (``requested_output_names``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack

from cdd_engine.serving.requests import CHANNELS, DEFAULT_MAX_FRAME_SIDE, INPUT, frame_problem


def _error(message: str):
    try:
        err = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):  # older stubs: no error codes
        err = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


def _tensor(name: str, array: np.ndarray):
    return pb_utils.Tensor.from_dlpack(name, torch.from_numpy(np.ascontiguousarray(array)))


class TritonPythonModel:
    def initialize(self, args):
        import cdd_engine

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.pixel_format = params.get("pixel_format", "RGB")
        self.channels = CHANNELS[self.pixel_format]
        self.max_side = int(params.get("max_frame_side", DEFAULT_MAX_FRAME_SIDE))
        engine_dir = Path(args["model_repository"]) / args["model_version"] / params.get("engine_subdir", "engine")
        options = {}
        if "threshold" in params:
            options["threshold"] = float(params["threshold"])
        if int(params.get("num_threads", "0")) > 0:
            options["num_threads"] = int(params["num_threads"])
        if args.get("model_instance_kind") == "GPU":
            options["device"] = f"cuda:{args['model_instance_device_id']}"
        # hashes were checked at export; a damaged copy still fails on size and format checks
        self.engine = cdd_engine.load(engine_dir, verify_hashes=False, **options)
        pb_utils.Logger.log_info(f"{args['model_name']} v{args['model_version']}: {self.engine!r}")

    def execute(self, requests):
        responses = [None] * len(requests)
        groups: dict[tuple[int, int], list[tuple[int, torch.Tensor, bool]]] = {}
        for i, request in enumerate(requests):
            t = pb_utils.get_input_tensor_by_name(request, INPUT)
            if t is None:
                responses[i] = _error(f"the request has no {INPUT} input")
                continue
            x = from_dlpack(t.to_dlpack())
            problem = frame_problem(tuple(x.shape), str(x.dtype).replace("torch.", ""), self.channels,
                                    self.max_side)
            if problem is not None:
                responses[i] = _error(problem)
                continue
            wants_map = "MAP" in request.requested_output_names()
            groups.setdefault((int(x.shape[1]), int(x.shape[2])), []).append((i, x, wants_map))
        for members in groups.values():
            self._score_group(members, responses)
        return responses

    def _score_group(self, members, responses) -> None:
        """One Engine.score call for all frames of one size; on failure each request alone, so one
        request's trouble (e.g. non-finite output) is only that request's error."""
        frames = members[0][1] if len(members) == 1 else torch.cat([x for _, x, _ in members])
        try:
            result = self.engine.score(frames, pixel_format=self.pixel_format,
                                       return_maps=any(m for _, _, m in members))
        except Exception as e:  # noqa: BLE001 - every failure becomes an error response
            if len(members) == 1:
                responses[members[0][0]] = _error(f"scoring failed: {type(e).__name__}: {e}")
                return
            for member in members:
                self._score_group([member], responses)
            return
        start = 0
        for i, x, wants_map in members:
            stop = start + int(x.shape[0])
            n = stop - start
            outputs = [_tensor("SCORE", result.scores[start:stop].reshape(n, 1)),
                       _tensor("IS_ANOMALOUS", result.is_anomalous[start:stop].reshape(n, 1)),
                       _tensor("THRESHOLD", np.full((n, 1), result.threshold, dtype=np.float32))]
            if wants_map:
                outputs.append(_tensor("MAP", result.maps[start:stop]))
            responses[i] = pb_utils.InferenceResponse(output_tensors=outputs)
            start = stop

    def finalize(self):
        self.engine = None
