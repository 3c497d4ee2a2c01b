"""2 processes with gloo on the CPU give the same CDD students as one process (float tolerance).

The comparison runs in float64. Splitting a batch over two ranks changes the order of the sums
(BatchNorm statistics, gradients), and small-batch BatchNorm training on these tiny students
amplifies that rounding ~1000x per update (float32: losses equal to 1e-7 at update 2, 1e-4 at
update 3). In float64 the cases below end with weights that differ by 7.7e-9 (sequential) and
3.9e-8 (alternate) at most, i.e. <= 0.34 of the asserted 1e-7 + 1e-6 * |w|; four global
updates with teacher share 0.3 already reached 2.4e-7, which is why the cases are short. So float64 checks the data-parallel
arithmetic itself (sharding, all-rank BatchNorm statistics, gradient sum, broadcast of the
domain students). The domain students (trained on one rank each) must be bitwise equal.

The ranks turn every FutureWarning into an error: the collectives must not rest on deprecated
torch APIs (``torch.distributed.nn.functional.all_reduce`` was one). The single-process
references are computed while the two ranks run, to keep the file's wall time short."""
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from cdd_engine.cdd import CDDOptions, train_cdd
from cdd_engine.cdd.distributed import DistContext
from cdd_engine.cdd.trainer import new_student
from cdd_engine.models import build_teacher
from cdd_engine.training.loop import TeacherFeatures

N, SIZE, BATCH = 9, 64, 4  # odd sizes: the last batch is short and splits unevenly
# 32² would make the bottleneck 1x1: BatchNorm over 2-3 values amplifies rounding into 1e-2
# differences, so 64² is the smallest size at which the comparison is about arithmetic


class _Images(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = torch.randn(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i):
        return {"image": self.x[i]}


def _run(case: str, ctx=None) -> dict[str, torch.Tensor]:
    options, epochs = CDDOptions(**CASES[case]["options"]), CASES[case]["epochs"]
    torch.manual_seed(0)
    teacher, _ = build_teacher("resnet18", "random")
    feats = TeacherFeatures(teacher.double(), _Images(), BATCH)
    res = train_cdd(feats, "resnet18", teacher.stage_channels, options, epochs, BATCH, seed=3, progress=False,
                    dist=ctx)
    out = {f"global.{k}": v.clone() for k, v in res.global_student.state_dict().items()}
    for j, s in enumerate(res.domain_students):
        out.update({f"domain{j}.{k}": v.clone() for k, v in s.state_dict().items()})
    out["domains"] = res.domains.clone()
    return out


# sequential: targets with a teacher gate of 0.5 and a share of 0.3, one global epoch (2 updates)
# after DST (the gate is per image, so sharding the batch over ranks must not change it).
# alternate: pure CDD targets (the default) from the current domain students, one warm-up round,
# then two epochs, so a round also runs inside a later epoch. Few updates: rounding differences grow
# ~1000x per update through small-batch BatchNorm (module docstring).
CASES = {
    "sequential-K3": {"options": {"domains": 3, "domain_update_ratio": 0.5, "teacher_share": 0.3,
                                   "teacher_gate": 0.5}, "epochs": 1},
    "alternate-K2": {"options": {"domains": 2, "schedule": "alternate", "warmup_epochs": 1, "teacher_share": 0.0},
                     "epochs": 2},
}


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("error", FutureWarning)  # no deprecated collectives
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name in CASES:
            out = _run(name, DistContext())
            if rank == 0:
                save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(folder, name + ".safetensors"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """(folder of the 2-rank results, single-process results by case), computed side by side."""
    folder = tmp_path_factory.mktemp("dist")
    ranks = mp.spawn(_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=False)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = {case: _run(case) for case in CASES}
    finally:
        torch.set_num_threads(prev)
        while not ranks.join():  # raises if a rank failed (e.g. a FutureWarning turned error)
            pass
    return folder, want


@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_processes_match_one(results, case):
    folder, reference = results
    got = load_file(str(folder / (case + ".safetensors")))
    want = reference[case]
    assert set(got) == set(want)
    assert torch.equal(got["domains"], want["domains"])
    compared = 0
    for k, w in want.items():
        if k.startswith("domain") and k != "domains":
            assert torch.equal(got[k], w), f"{k}: a domain student differs from the single-process one"
        elif w.is_floating_point():
            torch.testing.assert_close(got[k], w, rtol=1e-6, atol=1e-7, msg=lambda m: f"{k}: {m}")
            compared += 1
        else:
            assert torch.equal(got[k], w), k
    assert compared > 50
    # the global student did train: its weights moved away from a fresh initialisation
    fresh = new_student("resnet18", (64, 128, 256), 3, "cpu", torch.float64).state_dict()
    assert not torch.allclose(want["global.decoder.stages.0.0.conv1.weight"], fresh["decoder.stages.0.0.conv1.weight"])
