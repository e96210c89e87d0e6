"""Multi-node under torchrun, on one machine: two ``torchrun --nnodes 2 --nproc-per-node 1``
launches meeting at a c10d rendezvous on localhost (which numbers the nodes itself; torchrun
ignores ``--node-rank`` there) train as one node with ``--nproc-per-node 2`` does: the same
files, and the same parameters bit for bit (the same world size, one thread per process).
"""

from __future__ import annotations

import json

import pytest

from .launch import finish, free_port, one_node, rows, same_checkpoints, torchrun

FLAGS = ["--distributed", "--dist-timeout", "60", "--no-compile", "--no-progress", "--epochs", "1",
         "--batch-size", "64", "--hidden", "32", "16", "--max-steps", "12"]
LAST = "ckpt_000000012.safetensors"


def two_nodes(host: bool, port: int) -> list[str]:
    # A fixed world (--nnodes 2): the rendezvous waits for both agents; is_host names the agent
    # that serves the rendezvous store (on two hosts, the one at the endpoint's address).
    return ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-conf", f"is_host={int(host)}", "--max-restarts", "0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    port = free_port()
    # The three launches at once: the two "nodes" must run together anyway.
    nodes = [torchrun(two_nodes(host, port), [*FLAGS, "--out", str(root / "two_nodes")], root)
             for host in (True, False)]
    one = torchrun(one_node(0), [*FLAGS, "--out", str(root / "one_node")], root)
    return {"root": root, "nodes": [finish(p) for p in nodes], "one": finish(one)}


def test_two_nodes_form_one_world_of_two_and_one_rank_writes(runs):
    config = json.loads((runs["root"] / "two_nodes" / "config.json").read_text())
    assert config["world_size"] == 2
    results = [line for proc in runs["nodes"] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, [proc.stdout for proc in runs["nodes"]]


def test_two_nodes_give_the_parameters_of_one_node(runs):
    root = runs["root"]
    same_checkpoints(root / "two_nodes", root / "one_node", LAST, 12)
    assert rows(root / "two_nodes") == rows(root / "one_node")
