"""Scale-out over several Ray nodes, for real: Ray's own ``ray.cluster_utils.Cluster`` starts a head and a
worker node on this machine (one CPU each, so the two actors of a run land one per node), and
``loragraph run --ray`` drives it from a subprocess, as a user's command would. The oracle is the
one-process run: the same files, byte for byte, under the same names.

The test process never connects to the cluster (a driver of its own would outlive the node it is
asked to remove); it only starts and removes nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from loragraph.cli import main
from test_scaleout import EXAMPLES, LORAS, _lines, workflow

pytestmark = pytest.mark.slow  # two Ray nodes and three drivers: about a minute on two cores

@pytest.fixture(scope="module")
def two_nodes():
    pytest.importorskip("ray", reason='the Ray tests need pip install "loragraph[ray]"')
    from ray.cluster_utils import Cluster

    # a lost node is declared dead after 2 missed health checks of 0.5 s (Ray's default waits ~15 s)
    system = {"health_check_period_ms": 500, "health_check_failure_threshold": 2}
    # The nodes take this machine's own address, not 127.0.0.1: a driver's ray.init maps a loopback
    # address to the machine's, and would wait for a GCS listening on loopback only.
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": system})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster-models")
    shutil.copytree(EXAMPLES, root / "loras" / "shapes")
    return root


@pytest.fixture()
def actor_dirs():
    """The actors' work folders must be gone after each run (but a lost node's: it was killed)."""
    before = set(Path(tempfile.gettempdir()).glob("loragraph-actor-*"))
    yield before
    left = set(Path(tempfile.gettempdir()).glob("loragraph-actor-*")) - before
    for path in left:
        shutil.rmtree(path, ignore_errors=True)  # the killed node's actor: asserted by the test itself


def _driver(cluster, file: Path, models: Path, out: Path, *sweep: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    args = [sys.executable, "-m", "loragraph", "run", "--ray", "--json", "--threads", "1", str(file),
            "--models-dir", str(models), "--output-dir", str(out)]
    for axis in sweep:
        args += ["--sweep", axis]
    # unbuffered: the test reads the first reported run while the driver goes on
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env,
                            cwd=out.parent)


def _one_process(file: Path, models: Path, out: Path, *sweep: str, capsys) -> list[dict]:
    args = ["run", "--json", "--threads", "1", str(file), "--models-dir", str(models),
            "--output-dir", str(out)]
    for axis in sweep:
        args += ["--sweep", axis]
    main(args)
    return _lines(capsys.readouterr().out)


def _same_files(out: Path, one: Path) -> None:
    names = sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names  # nothing more (no file twice), nothing less
    for name in names:
        assert (out / name).read_bytes() == (one / name).read_bytes(), name


def _actor_rows(err: str) -> list[list[str]]:
    return [line.split() for line in err.splitlines() if line.strip()[:2] in ("a0", "a1", "a2", "a3")
            and len(line.split()) >= 7]


def test_sweep_over_two_nodes_is_bit_identical_and_survives_a_lost_node(two_nodes, models, tmp_path, capsys,
                                                                        actor_dirs):
    file = tmp_path / "wf.json"
    wf = workflow(prefix="node")
    wf["3"]["inputs"]["steps"] = 12  # long enough that the node leaves in the middle of the sweep
    file.write_text(json.dumps(wf))
    sweep = ("3.seed=1-6", "2.lora_name=" + ",".join(LORAS))
    one = _one_process(file, models, tmp_path / "one", *sweep, capsys=capsys)
    assert len(one) == 18

    # both nodes, nothing lost: the one-process files, and one actor on each node
    proc = _driver(two_nodes, file, models, tmp_path / "both", *sweep)
    out, err = (b.decode() for b in proc.communicate(timeout=600))
    assert proc.returncode == 0, err
    assert [(x["set"], x["outputs"]) for x in _lines(out)] == [(x["set"], x["outputs"]) for x in one]
    _same_files(tmp_path / "both", tmp_path / "one")
    rows = _actor_rows(err)
    assert len(rows) == 2 and len({r[6] for r in rows}) == 2, err  # the node column: two nodes
    assert all(int(r[1]) > 0 for r in rows), err  # both did work
    assert set(Path(tempfile.gettempdir()).glob("loragraph-actor-*")) == actor_dirs  # work dirs removed

    # the worker node leaves once the first run is reported (both actors are mid-sweep then)
    proc = _driver(two_nodes, file, models, tmp_path / "lost", *sweep)
    first = proc.stdout.readline().decode()
    assert json.loads(first)["status"] == "success"
    worker = next(iter(two_nodes.worker_nodes))
    two_nodes.remove_node(worker, allow_graceful=False)
    try:
        out, err = (b.decode() for b in proc.communicate(timeout=600))
    finally:
        two_nodes.add_node(num_cpus=1)  # the next test has two nodes again
        two_nodes.wait_for_nodes()
    assert proc.returncode == 0, err
    lines = _lines(first + out)
    assert [(x["set"], x["outputs"]) for x in lines] == [(x["set"], x["outputs"]) for x in one]
    _same_files(tmp_path / "lost", tmp_path / "one")  # no job lost, no file written twice
    assert "(lost)" in err, err
    moved = [line for line in err.splitlines() if line.strip().startswith("moved: run ")]
    assert moved and all("ran on a" in line for line in moved), err  # the summary names the moved jobs
    assert "retried after an actor was lost" in err
    # only the killed actor's folder is left (its process never got to remove it)
    assert len(set(Path(tempfile.gettempdir()).glob("loragraph-actor-*")) - actor_dirs) <= 1


def test_a_restarted_driver_finds_the_live_cluster(two_nodes, models, tmp_path, capsys, actor_dirs):
    """A driver killed outright (SIGKILL: no cleanup of its own) leaves a live cluster; the next driver
    joins it, gets both nodes' slots back once Ray reclaims the dead driver's actors, and runs it all."""
    file = tmp_path / "wf.json"
    wf = workflow(prefix="again")
    wf["3"]["inputs"]["steps"] = 12
    file.write_text(json.dumps(wf))
    sweep = ("3.seed=1-3", "2.lora_name=" + ",".join(LORAS[:2]))
    proc = _driver(two_nodes, file, models, tmp_path / "killed", *sweep)
    assert json.loads(proc.stdout.readline().decode())["status"] == "success"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)

    one = _one_process(file, models, tmp_path / "one", *sweep, capsys=capsys)
    started = time.monotonic()
    proc = _driver(two_nodes, file, models, tmp_path / "again", *sweep)
    out, err = (b.decode() for b in proc.communicate(timeout=600))
    assert proc.returncode == 0, err
    assert [(x["set"], x["outputs"]) for x in _lines(out)] == [(x["set"], x["outputs"]) for x in one]
    _same_files(tmp_path / "again", tmp_path / "one")
    rows = _actor_rows(err)
    assert len(rows) == 2 and len({r[6] for r in rows}) == 2, err
    assert time.monotonic() - started < 300
