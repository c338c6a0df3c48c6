"""Data parallel (evals/distributed.py): lm-eval shards by rank, rank 0 gathers and writes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from evals import distributed

REPO = Path(__file__).resolve().parent.parent


def test_world_from_the_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world_from_env() == distributed.World(0, 1, 0, 1)
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    world = distributed.world_from_env()
    assert world == distributed.World(9, 16, 1, 8) and not world.main
    assert distributed.process_device(distributed.World(), "cpu") == "cpu"
    assert distributed.process_device(world, "cpu") == "cpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_collectives_of_a_one_process_gloo_group(monkeypatch):
    if dist.is_initialized():
        pytest.skip("a process group already exists in this pytest process")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        world = distributed.World(0, 1, 0, 1)
        lm = distributed.DistributedLM(object(), world)
        assert lm.rank == 0 and lm.world_size == 1
        assert lm.all_gather(torch.tensor(5)).tolist() == [5]  # a 0-d count becomes one entry per rank
        assert lm.gather_object({"a": 1}) == [{"a": 1}]
        lm.barrier()
    finally:
        dist.destroy_process_group()


SHARED_MEMORY = """
import json, sys
from evals import distributed, memory
from evals.errors import ModelError
from evals.models import load_model

world = distributed.world_from_env()
memory.available_memory_bytes = lambda *a, **k: [1 << 30, 40 << 20][world.rank]  # 1 GiB, 40 MiB
distributed.setup("cpu")
said = {"memory": distributed.shared_memory(world, "cpu")}
try:  # random:tiny-phi: 6.7M weights, 26 MiB in float32, 13 MiB in bfloat16
    load_model("random:tiny-phi", "cpu", "float32", memory=said["memory"])
    said["error"] = None
except ModelError as exc:
    said["error"] = str(exc)
said["cpu_alone"] = distributed.shared_memory(distributed.World(), "cpu")
open(sys.argv[1] + str(world.rank), "w").write(json.dumps(said))
distributed.teardown()
"""


@pytest.mark.integration
def test_processes_of_one_machine_check_their_copies_against_the_least_memory_measured(tmp_path):
    script, said = tmp_path / "shared_memory.py", tmp_path / "said"
    script.write_text(SHARED_MEMORY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), str(script), str(said)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    every = [json.loads(Path(f"{said}{rank}").read_text()) for rank in range(2)]
    assert all(s["memory"] == [40 << 20, 2] for s in every)  # the least measured (rank 1's), 2 processes
    assert all(s["cpu_alone"] == [None, 1] for s in every)  # one process measures at its load
    error = every[0]["error"]  # 2 x 26 MiB do not fit in 40 MiB; 2 x 13 MiB or one copy would
    assert error and all(s["error"] == error for s in every), every
    assert ("weights in float32 in 2 processes at once, but cpu has 0.0 GiB available: use --dtype bfloat16 (0.0 GiB), "
            "fewer processes per machine (0.0 GiB for one), a smaller model") in error


def phi2eval(args: list[str], env: dict, nproc: int | None = None) -> subprocess.CompletedProcess:
    """`python -m evals.cli ...`, or under torchrun with `nproc` CPU processes."""
    head = [sys.executable, "-m", "evals.cli"] if nproc is None else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-port", str(free_port()), "-m", "evals.cli"]
    proc = subprocess.run(head + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read(out: Path) -> tuple[dict, list[dict]]:
    folder = out / "random-tiny-phi"
    result = json.loads((folder / "arc_easy.json").read_text())
    samples = [json.loads(line) for line in (folder / "arc_easy.samples.jsonl").read_text().splitlines()]
    return result, samples


# a random tiny Phi (seeded: the same weights in every process) loads in seconds where the
# embedded model's GGUF file takes 30 s per process to dequantise; sharding knows no model
COMMON = ["run", "arc_easy", "--limit", "12", "--batch-size", "1", "--device", "cpu", "--model", "random:tiny-phi"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """arc_easy --limit 12 under torchrun with 2 CPU processes (gloo), filling a fresh request cache."""
    from tests.conftest import real_data_dir

    data = real_data_dir()
    if data is None:
        pytest.skip("real data (../shared/data) not present")
    tmp = tmp_path_factory.mktemp("dp")
    # one thread per process and batch size 1: the numbers do not depend on how requests are batched
    env = {**os.environ, "PHI2EVAL_DATA_DIR": str(data), "PHI2EVAL_CACHE_DIR": str(tmp / "cache"),
           "OMP_NUM_THREADS": "1"}
    proc = phi2eval(COMMON + ["--output-dir", str(tmp / "two")], env, nproc=2)
    return {"env": env, "tmp": tmp, "stdout": proc.stdout, "out": read(tmp / "two")}


@pytest.mark.integration
@pytest.mark.slow
def test_two_processes_give_the_same_results_as_one(two_process_run):
    tmp, env = two_process_run["tmp"], two_process_run["env"]
    phi2eval(COMMON + ["--output-dir", str(tmp / "one"), "--no-cache"], env)
    assert two_process_run["stdout"].count("arc_easy       acc =") == 1  # only rank 0 prints and writes
    r1, s1 = read(tmp / "one")
    r2, s2 = two_process_run["out"]
    assert r2["env"]["processes"] == 2 and r1["env"]["processes"] == 1
    assert [s["doc_id"] for s in s2] == list(range(12))
    assert s2 == s1  # every per-sample record, loglikelihoods included, bit for bit
    for key in ("score", "stderr", "n", "n_total", "metrics"):
        assert r2[key] == r1[key], key
    assert r2["cache"] == {"hits": 0, "misses": 48, "enabled": True}  # 12 questions x 4 choices, split over ranks


@pytest.mark.integration
@pytest.mark.slow
def test_the_cache_of_two_processes_serves_one(two_process_run):
    tmp, env = two_process_run["tmp"], two_process_run["env"]
    proc = phi2eval(COMMON + ["--output-dir", str(tmp / "again")], env)
    r2, s2 = two_process_run["out"]
    r3, s3 = read(tmp / "again")
    assert r3["cache"] == {"hits": 48, "misses": 0, "enabled": True}, proc.stdout
    assert s3 == s2 and r3["score"] == r2["score"]
