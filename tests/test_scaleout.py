"""Scale-out on Ray (docs/CONTRACT.md, "Pinned for the next features": Ray): a real local Ray cluster on
127.0.0.1.

One cluster serves the session (``ray.init(num_cpus=2)``: two CPU actors of one thread each, as on
CI's two cores); every test starts its own pool of actors in it. The model is the shipped
``builtin:shapes`` (32x32) with its three LoRAs, at 4 steps. The oracle is the one-process run:
the same files, byte for byte, under the same names.
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from loragraph.cli import main
from loragraph.scaleout import router as routing
from loragraph.scaleout.needs import Needs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "models" / "loras" / "shapes"
LORAS = ["shapes/palette.safetensors", "shapes/outline.safetensors", "shapes/texture.safetensors"]


def workflow(lora: str = LORAS[0], seed: int = 1, prefix: str = "ray") -> dict:
    wf = {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:shapes", "dtype": "float32", "device": "cpu"}},
        "2": {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": lora, "strength": 1.0,
                                                  "adapter_name": ""}},
        "3": {"class_type": "Sampler", "inputs": {
            "pipeline": ["2", 0], "prompt": "a red circle on a white background", "negative_prompt": "",
            "seed": seed, "steps": 4, "cfg": 7.0, "width": 32, "height": 32, "scheduler": "default",
            "batch_size": 1}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }
    # titles, as an exported workflow has them (comfy-api-simplified finds nodes by title)
    for node in wf.values():
        node["_meta"] = {"title": {"SaveImage": "Save Image"}.get(node["class_type"], node["class_type"])}
    return wf


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason='the Ray tests need pip install "loragraph[ray]"')
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, namespace="loragraph-tests", log_to_driver=False,
                 _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


KILLED_ACTOR_DIRS: list[str] = []  # work folders of actors a test killed (their process could not clean up)


@pytest.fixture(autouse=True)
def no_actor_dir_left():
    """Every actor a test started and stopped has removed its work folder by the test's end."""
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("loragraph-actor-*"))
    yield
    killed = {Path(d) for d in KILLED_ACTOR_DIRS}
    for path in killed:
        shutil.rmtree(path, ignore_errors=True)
    KILLED_ACTOR_DIRS.clear()
    left = set(Path(tempfile.gettempdir()).glob("loragraph-actor-*")) - before - killed
    assert not left, f"actor work folders left behind: {sorted(map(str, left))}"


@pytest.fixture(scope="module")
def shapes_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-models")
    shutil.copytree(EXAMPLES, root / "loras" / "shapes")
    # A LoRA holding NaN: refused when the node reads it whole, an execution error (a damaged header
    # would be refused before the run, as an invalid workflow)
    import safetensors.torch

    tensors = safetensors.torch.load_file(str(root / "loras" / "shapes" / "outline.safetensors"))
    first = min(k for k in tensors if k.endswith("weight"))
    tensors[first][0, 0] = float("nan")
    safetensors.torch.save_file(tensors, str(root / "loras" / "bad.safetensors"))
    return root


def _sweep_args(file: Path, models: Path, output: Path) -> list[str]:
    # the LoRA varies fastest: the order that makes round-robin switch LoRAs on every job
    return ["run", "--json", "--threads", "1", str(file), "--models-dir", str(models), "--output-dir",
            str(output), "--sweep", "3.seed=1-4", "--sweep", "2.lora_name=" + ",".join(LORAS)]


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- the router alone --------------------------------------------------------------------------


def test_router_keeps_lora_sets_together_and_balances_by_stealing():
    jobs = [routing.Job(i, Needs(frozenset({"base"}), frozenset({"abc"[i % 3]}))) for i in range(12)]
    router = routing.Router(["x", "y"])
    for job in jobs:
        router.add(job)
    ran: dict[str, list[str]] = {"x": [], "y": []}
    while router.pending():  # both actors take a job, then both finish it (equal job times)
        taken = [(name, router.next_job(name)) for name in ("x", "y")]
        for name, job in taken:
            if job is not None:
                ran[name].append(next(iter(job.needs.adapters)))
                router.finished(name, job, job.needs.bases, router.actors[name].adapters | job.needs.adapters)
    switches = sum(sum(a != b for a, b in itertools.pairwise(seq)) + 1 for seq in ran.values() if seq)
    assert sorted(len(seq) for seq in ran.values()) == [6, 6]  # balanced
    assert switches <= 4, ran  # 3 LoRA sets over 2 actors: at most one set split between them
    rr = routing.Router(["x", "y"], policy="round-robin")
    for job in [routing.Job(j.id, j.needs) for j in jobs]:
        rr.add(job)
    assert [j.id for j in rr.actors["x"].queue] == [0, 2, 4, 6, 8, 10]


def test_router_prefers_the_actor_holding_the_loras_and_breaks_ties_by_load():
    router = routing.Router(["x", "y", "z"])
    router.actors["y"].adapters = {"a", "b"}
    router.actors["z"].adapters = {"a"}
    assert router.add(routing.Job(0, Needs(adapters=frozenset({"a", "b"})))) == "y"
    assert router.add(routing.Job(1, Needs(adapters=frozenset({"c"})))) == "x"  # a miss: least loaded
    assert router.add(routing.Job(2, Needs(adapters=frozenset({"a"})))) == "z"  # tie y/z on "a": z is idle
    lost = router.lost("y")
    assert [j.id for j in lost] == [0]
    assert router.add(lost[0]) == "z"  # the next best holder still alive


def test_pool_size_parses_min_max_and_follows_the_queue():
    from loragraph.scaleout.sizing import PoolSize, idle_to_stop, want_more

    assert PoolSize.parse("2") == PoolSize(2, 2) and PoolSize.parse("1-4") == PoolSize(1, 4)
    for bad in ("0-2", "3-1", "x", "1-"):
        with pytest.raises(ValueError, match="--ray-actors"):
            PoolSize.parse(bad)
    assert PoolSize().bounds(slots=3) == (1, 3) and PoolSize(2, None).bounds(slots=1) == (1, 1)
    # start one when a job has waited longer than one job's time, one at a time, up to MAX
    assert not want_more(0.4, 0.5, alive=1, starting=0, hi=2)
    assert want_more(0.6, 0.5, alive=1, starting=0, hi=2)
    assert not want_more(0.6, 0.5, alive=1, starting=1, hi=3)  # one is starting already
    assert not want_more(0.6, 0.5, alive=2, starting=0, hi=2)
    assert not want_more(9.0, None, alive=1, starting=0, hi=2)  # no job finished: no unit yet
    # stop the longest idle past the idle period, never below MIN
    assert idle_to_stop({"a0": 70.0, "a1": 61.0}, alive=2, lo=1, idle_stop_s=60) == "a0"
    assert idle_to_stop({"a0": 59.0}, alive=2, lo=1, idle_stop_s=60) is None
    assert idle_to_stop({"a0": 70.0}, alive=1, lo=1, idle_stop_s=60) is None


def test_pool_places_one_actor_per_gpu_else_per_cpu_slot():
    from loragraph.scaleout.pool import Pool

    assert Pool(None, threads=1)._placement({"CPU": 16.0, "GPU": 2.0}) == (2, {"num_gpus": 1, "num_cpus": 1})
    assert Pool(None, threads=2)._placement({"CPU": 5.0}) == (2, {"num_cpus": 2})


def test_serve_placement_waits_for_the_holder_up_to_the_bound():
    """serve --ray's rule on a router with real jobs: idle holder first; a busy holder whose work ends
    within the bound; else the best idle actor; with none idle the prompt stays in the queue."""
    from loragraph.scaleout.pool import Pool
    from loragraph.scaleout.serve import PoolWorker

    pool = Pool(None, actors=3)
    pool.router = routing.Router(["x", "y", "z"])
    pool.job_s = 1.0
    worker = PoolWorker(queue=None, hub=None, pool=pool, affinity_wait_s=0.5)
    lora_a = Needs(frozenset({"base"}), frozenset({"a"}))
    pool.router.actors["x"].adapters = {"a"}
    assert worker._place(lora_a) == "x"  # idle and holding it
    pool.router.add(routing.Job(0, lora_a), among=["x"])
    running = pool.router.next_job("x")  # x is busy, its job has just started: 1 s to go
    assert worker._place(lora_a) in ("y", "z")  # 1 s > the 0.5 s bound: an idle actor, cold
    running.started_at -= 0.7  # 0.3 s to go
    assert worker._place(lora_a) == "x"  # waits for the holder: no load
    assert worker._place(Needs(frozenset({"base"}), frozenset({"b"}))) in ("y", "z")  # a miss: idle
    for name in ("y", "z"):
        pool.router.add(routing.Job(1, lora_a), among=[name])
    running.started_at += 0.7
    assert worker._place(lora_a) is None  # none idle, the holder too far off: stays pending


def test_an_output_served_from_an_actors_cache_is_run_again():
    from loragraph.graph import ExecutionResult
    from loragraph.scaleout.actor import _files_from_cache

    image = {"images": [{"filename": "x_00001_.png", "subfolder": "", "type": "output"}]}
    ran = ExecutionResult("p", "success", outputs={"4": image}, executed=["3", "4"])
    cached = ExecutionResult("p", "success", outputs={"4": image}, executed=["3"], cached=["4"])
    text_only = ExecutionResult("p", "success", outputs={"5": {"text": ["info"]}}, cached=["5"])
    assert not _files_from_cache(ran) and _files_from_cache(cached) and not _files_from_cache(text_only)


# --- run --ray -----------------------------------------------------------------------------------


def test_run_ray_is_bit_identical_and_routing_keeps_loras(ray_cluster, shapes_models, tmp_path, capsys,
                                                          monkeypatch):
    file = tmp_path / "wf.json"
    file.write_text(json.dumps(workflow()))
    assert main(_sweep_args(file, shapes_models, tmp_path / "one")) == 0
    one = _lines(capsys.readouterr().out)
    assert len(one) == 12

    loads = {}
    for policy in ("affinity", "round-robin"):
        monkeypatch.setenv("LORAGRAPH_RAY_ROUTING", policy)
        out = tmp_path / policy
        assert main([*_sweep_args(file, shapes_models, out), "--ray"]) == 0
        captured = capsys.readouterr()
        lines = _lines(captured.out)
        assert [(x["set"], x["outputs"]) for x in lines] == [(x["set"], x["outputs"]) for x in one]
        names = sorted(p.name for p in (tmp_path / "one").iterdir())
        assert sorted(p.name for p in out.iterdir()) == names  # nothing more, nothing less
        for name in names:
            assert (out / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), (policy, name)
        rows = [line.split() for line in captured.err.splitlines() if line.strip().startswith(("a0 ", "a1 "))]
        assert len(rows) == 2 and sum(int(r[1]) for r in rows) == 12
        loads[policy] = sum(int(r[2]) + int(r[3]) for r in rows)  # LoRA loads + hot-swaps
    # affinity: each actor keeps its LoRA sets (3 sets on 2 actors: one may be split by stealing);
    # round-robin with the LoRA varying fastest switches on most of its 6 jobs per actor (the 24-job
    # benchmark shows the full ratio; 12 jobs keep this test short)
    assert loads["affinity"] <= 4 and loads["round-robin"] >= 2 * loads["affinity"], loads


def test_run_ray_without_ray_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    file = tmp_path / "wf.json"
    file.write_text(json.dumps(workflow()))
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray gives: ImportError
    assert main(["run", "--ray", str(file), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "loragraph[ray]"' in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert main(["serve", "--ray", "--port", "0", "--no-editor"]) == 2  # refused before it listens
    assert 'loragraph serve: --ray needs Ray' in capsys.readouterr().err


# --- faults --------------------------------------------------------------------------------------


def test_killed_actor_loses_nothing_and_a_bad_job_is_reported_once(ray_cluster, shapes_models, tmp_path,
                                                                    capsys):
    from loragraph import host
    from loragraph.graph import apply_overrides
    from loragraph.scaleout.needs import job_needs
    from loragraph.scaleout.output_commit import commit_files
    from loragraph.scaleout.pool import Pool

    prompts = [workflow(lora, seed, "kill") for seed in (1, 2) for lora in LORAS]
    prompts.insert(3, apply_overrides(workflow(), ["2.lora_name=bad.safetensors"]))
    files = []
    for i, prompt in enumerate(prompts):
        files.append(tmp_path / f"wf{i}.json")
        files[-1].write_text(json.dumps(prompt))
    # the oracle: one process, the files in order
    assert main(["run", "--json", "--threads", "1", *map(str, files), "--models-dir", str(shapes_models),
                 "--output-dir", str(tmp_path / "one")]) == 1  # the bad one is an execution error
    one = _lines(capsys.readouterr().out)

    host.configure(models_dir=shapes_models, output_dir=tmp_path / "ray")
    done: dict[int, list] = {}
    lock = threading.Lock()
    killed: list[int] = []

    def on_done(job, outcome):
        with lock:
            done.setdefault(job.id, []).append((job.attempts, outcome))

    pool = Pool(str(shapes_models), actors=2, on_done=on_done)

    def on_event(job, actor, event):
        # Kill an actor in the middle of a job after its first (which carries the pipeline build).
        # Either actor: the router decides which one gets a second job, and of 6 rendering jobs on 2 one
        # always does (waiting for a0 alone failed whenever a1 took every later job).
        if event[0] != "progress" or event[1]["value"] != 2:
            return
        with lock:
            if killed or not any(o.actor == actor for outs in done.values() for _, o in outs):
                return
            killed.append((job.id, actor))
        ray_cluster.kill(pool.actors[actor].handle, no_restart=True)

    pool.on_event = on_event
    pool.start()
    try:
        for i, prompt in enumerate(prompts):
            pool.submit(routing.Job(i, job_needs(prompt), {"prompt": prompt}))
        pool.close()
        for info in pool.actors.values():
            info.thread.join(300)
    finally:
        pool.shutdown()
    assert killed, "the actor was never killed mid-job"
    KILLED_ACTOR_DIRS.append(pool.actors[killed[0][1]].work_dir)
    assert sorted(done) == list(range(len(prompts)))
    assert all(len(outs) == 1 for outs in done.values()), done  # every job reported exactly once
    (killed_job, victim), = killed
    survivor = "a1" if victim == "a0" else "a0"
    attempts, outcome = done[killed_job][0]
    assert attempts == 2 and outcome.actor == survivor and outcome.result["result"].ok  # retried elsewhere
    bad_attempts, bad = done[3][0]
    assert bad_attempts == 1 and bad.result["result"].status == "error"  # its own fault: not retried
    assert "bad.safetensors" in json.dumps(bad.result["result"].error)
    assert not pool.actors[victim].alive and pool.retried == 1
    for i in range(len(prompts)):  # the driver commits in run order, as the CLI does
        result = done[i][0][1].result["result"]
        commit_files(done[i][0][1].result["files"], result.outputs)
        assert result.outputs == one[i]["outputs"]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == names  # no file twice, no temp left
    for name in names:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


# --- serve --ray -----------------------------------------------------------------------------------


def test_serve_ray_fronts_the_pool_for_an_existing_client(ray_cluster, shapes_models, tmp_path):
    """comfy-api-simplified, unchanged, against a server whose prompts run on two actors."""
    import urllib.request

    from loragraph import host
    from loragraph.scaleout.serve import worker_factory
    from loragraph.server import ServerConfig
    from test_server import LiveServer

    simplified = pytest.importorskip("comfy_api_simplified")
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=shapes_models, output_dir=tmp_path / "served")
    config = ServerConfig(input_dir=tmp_path / "input", editor=False,
                          worker_factory=worker_factory(str(shapes_models), actors=2))
    server = LiveServer(config).start()
    try:
        api = simplified.ComfyApiWrapper(server.url)
        # a long prompt holds one actor while the client's prompts run on the other
        long = workflow(LORAS[2], 9, "long")
        long["3"]["inputs"].update(steps=500, width=128, height=128)  # minutes: interrupted long before
        long_id = api.queue_prompt(long)["prompt_id"]
        deadline = time.monotonic() + 120
        while not api.get_queue()["queue_running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [item[1] for item in api.get_queue()["queue_running"]] == [long_id]
        images = [api.queue_and_wait_images(
            simplified.ComfyWorkflowWrapper(_as_file(tmp_path, workflow(lora, 1, "srv"))), "Save Image")
            for lora in LORAS[:2]]
        got = [next(iter(batch.items())) for batch in images]
        assert [name for name, _ in got] == ["srv_00001_.png", "srv_00002_.png"]
        # /interrupt names the long prompt: its actor stops it at the next step
        request = urllib.request.Request(f"{server.url}/interrupt",
                                         data=json.dumps({"prompt_id": long_id}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=30).read()
        while long_id not in api.get_history(long_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        entry = api.get_history(long_id)[long_id]
        assert entry["status"]["status_str"] == "error"
        assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"]), (
            entry["status"])
        assert api.get_queue() == {"queue_running": [], "queue_pending": []}
    finally:
        server.stop()
        host.configure(models_dir=before[0], output_dir=before[1])
    # the same bytes as one process writes for the same workflows
    assert main(["run", "--json", "--threads", "1", str(_as_file(tmp_path, workflow(LORAS[0], 1, "srv"))),
                 str(_as_file(tmp_path, workflow(LORAS[1], 1, "srv"))), "--models-dir", str(shapes_models),
                 "--output-dir", str(tmp_path / "one")]) == 0
    for name, data in got:
        assert data == (tmp_path / "one" / name).read_bytes() == (tmp_path / "served" / name).read_bytes()
    assert not (tmp_path / "served" / "long_00001_.png").exists()


COMFYSCRIPT_CLIENT = """
import json, sys
from comfy_script.runtime import load, Workflow
load(sys.argv[1])
from comfy_script.runtime.nodes import LoadLoRA, LoadPipeline, Sampler, SaveImage
with Workflow(wait=True):
    pipe = LoadPipeline(model="builtin:shapes", dtype="float32", device="cpu")
    pipe = LoadLoRA(pipeline=pipe, lora_name=sys.argv[2], strength=1.0, adapter_name="")
    images = Sampler(pipeline=pipe, prompt="a red circle on a white background", negative_prompt="",
                     seed=1, steps=4, cfg=7.0, width=32, height=32, scheduler="default", batch_size=1)
    saved = SaveImage(images=images, filename_prefix="cs")
images = saved.wait().wait()  # the node's result, then its images fetched through /view
open(sys.argv[3], "wb").write(images[0].convert("RGB").tobytes())
# to a file: ComfyScript prints its queue progress ("Queue remaining: 0") to stdout from a thread,
# which can land on the same line as a print here
open(sys.argv[4], "w").write(json.dumps({"images": len(images), "size": images[0].size}))
"""


def test_serve_ray_answers_comfyscript_unchanged(ray_cluster, shapes_models, tmp_path):
    """ComfyScript's client mode (no ComfyUI checkout: it builds its nodes from /object_info), run as a
    user runs it, in its own process, against serve --ray: the image it gets is loragraph run's."""
    import subprocess
    import sys

    from loragraph import host
    from loragraph.scaleout.serve import worker_factory
    from loragraph.server import ServerConfig
    from PIL import Image
    from test_server import LiveServer

    pytest.importorskip("comfy_script.runtime", reason='needs pip install "comfy-script[client]"')
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=shapes_models, output_dir=tmp_path / "served")
    config = ServerConfig(input_dir=tmp_path / "input", editor=False,
                          worker_factory=worker_factory(str(shapes_models), actors=1))
    server = LiveServer(config).start()
    try:
        script = tmp_path / "comfyscript_client.py"
        script.write_text(COMFYSCRIPT_CLIENT)
        done = subprocess.run([sys.executable, str(script), server.url + "/", LORAS[1], str(tmp_path / "px"),
                               str(tmp_path / "result.json")],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        out = json.loads((tmp_path / "result.json").read_text())
    finally:
        server.stop()
        host.configure(models_dir=before[0], output_dir=before[1])
    assert out == {"images": 1, "size": [32, 32]}
    assert sorted(p.name for p in (tmp_path / "served").iterdir()) == ["cs_00001_.png"]
    assert main(["run", "--threads", "1", _as_file(tmp_path, workflow(LORAS[1], 1, "cs")), "--models-dir",
                 str(shapes_models), "--output-dir", str(tmp_path / "one")]) == 0
    with Image.open(tmp_path / "one" / "cs_00001_.png") as one:
        assert (tmp_path / "px").read_bytes() == one.convert("RGB").tobytes()
    with Image.open(tmp_path / "served" / "cs_00001_.png") as served:
        assert "ComfyScriptSource" in served.text  # the client's extra_pnginfo, kept as ComfyUI keeps it
    # the LoRA shows: without it the same seed gives another image
    bare = workflow(LORAS[1], 1, "bare")
    bare["3"]["inputs"]["pipeline"] = ["1", 0]
    del bare["2"]
    assert main(["run", "--threads", "1", _as_file(tmp_path, bare), "--models-dir", str(shapes_models),
                 "--output-dir", str(tmp_path / "one")]) == 0
    with Image.open(tmp_path / "one" / "bare_00001_.png") as plain:
        assert (tmp_path / "px").read_bytes() != plain.convert("RGB").tobytes()


def _as_file(folder: Path, wf: dict) -> str:
    path = folder / f"wf-{abs(hash(json.dumps(wf, sort_keys=True)))}.json"
    path.write_text(json.dumps(wf))
    return str(path)


def test_interrupted_driver_stops_its_actors_and_respects_ray_address(ray_cluster, shapes_models, tmp_path):
    """Ctrl-C on `loragraph run --ray` (joined to this cluster through RAY_ADDRESS): exit 130, the
    runs before it reported, its actors gone (their CPUs back), no file of a job it did not report."""
    import os
    import signal
    import subprocess
    import sys

    file = tmp_path / "wf.json"
    wf = workflow()
    wf["3"]["inputs"]["steps"] = 60
    file.write_text(json.dumps(wf))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen(
        [sys.executable, "-m", "loragraph", "run", "--ray", "--json", str(file), "--models-dir",
         str(shapes_models), "--output-dir", str(tmp_path / "out"), "--sweep", "3.seed=1-40"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env, cwd=tmp_path)
    # Unbuffered: a buffered readline() may read the next lines too, and communicate() reads the pipe
    # itself, past that buffer: a run reported right after the first was lost to this test (a flake).
    first = proc.stdout.readline().decode()  # one run reported: the actors are busy with the next ones
    assert json.loads(first)["status"] == "success"
    proc.send_signal(signal.SIGINT)
    out, err = (b.decode() for b in proc.communicate(timeout=120))
    assert proc.returncode == 130, err
    reported = [json.loads(line) for line in [first, *out.splitlines()] if line.startswith("{")]
    assert 1 <= len(reported) < 40
    assert "interrupting" in err and "ray: 2 actors" in err  # the per-actor summary still printed
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    # (an interrupted run may have saved before it stopped: its line names the file, as in one process)
    written = sorted(i["filename"] for r in reported for i in r["outputs"].get("4", {}).get("images", []))
    assert names == written
    deadline = time.monotonic() + 60
    while ray_cluster.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_cluster.available_resources().get("CPU", 0) == 2  # the CLI's actors are gone


def test_serve_ray_routes_by_affinity_and_reaches_the_right_actors(ray_cluster, shapes_models, tmp_path):
    """A prompt goes to the actor holding its LoRA, /queue and /history name the actor, /ws progress
    comes from the actor running the prompt, and /free unloads every actor."""
    from loragraph import host
    from loragraph.scaleout.serve import ACTOR_KEY, worker_factory
    from loragraph.server import ServerConfig
    from loragraph.server.app import SERVER_KEY
    from test_server import LiveServer, with_client

    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=shapes_models, output_dir=tmp_path / "served")
    config = ServerConfig(input_dir=tmp_path / "input", editor=False,
                          worker_factory=worker_factory(str(shapes_models), actors=2))
    server = LiveServer(config).start()
    pool = server.app[SERVER_KEY].worker.pool

    async def body(client):
        ran = {}
        for lora, seed in ((LORAS[0], 1), (LORAS[1], 1), (LORAS[0], 2), (LORAS[1], 2), (LORAS[0], 3)):
            prompt_id = (await client.queue(workflow(lora, seed, "aff")))["prompt_id"]
            messages = await client.finished(prompt_id, timeout=300)
            steps = [m["data"]["value"] for m in messages if m["type"] == "progress"]
            assert steps == [1, 2, 3, 4], messages  # this prompt's progress, each step once
            _, history = await client.get(f"/history/{prompt_id}")
            entry = history[prompt_id]
            assert entry["status"]["status_str"] == "success"
            ran.setdefault(lora, []).append(entry["prompt"][3][ACTOR_KEY])
        # both actors are idle at each prompt: the one that built the base wins, and holds the LoRAs
        # from then on (a pipeline build costs seconds, a LoRA load here tens of ms)
        assert len({a for actors in ran.values() for a in actors}) == 1, ran
        # /queue shows a running prompt's actor: a long one, read while it runs
        long = workflow(LORAS[2], 9, "long")
        long["3"]["inputs"].update(steps=400, width=96, height=96)
        long_id = (await client.queue(long))["prompt_id"]
        await client.wait_for(lambda m: m["type"] == "progress" and m["data"].get("prompt_id") == long_id,
                              timeout=300)
        _, queue = await client.get("/queue")
        assert [item[1] for item in queue["queue_running"]] == [long_id]
        assert queue["queue_running"][0][3][ACTOR_KEY] in pool.actors
        status, _ = await client.post("/interrupt", {"prompt_id": long_id})
        assert status == 200
        await client.finished(long_id, timeout=300)
        # /free reaches every actor: none holds a pipeline or a LoRA afterwards
        status, _ = await client.post("/free", {"unload_models": True, "free_memory": True})
        assert status == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            held = ray_cluster.get([info.handle.report.remote() for info in pool.actors.values()])
            if not any(r["bases"] or r["adapters"] for r in held):
                break
            await asyncio.sleep(0.2)
        assert not any(r["bases"] or r["adapters"] for r in held), held
        return ran

    import asyncio

    try:
        with_client(server, body)
        dirs = [info.work_dir for info in pool.actors.values()]
    finally:
        server.stop()
        host.configure(models_dir=before[0], output_dir=before[1])
    assert dirs and not any(Path(d).exists() for d in dirs)  # each actor removed its work folder


def test_pool_grows_with_the_queue_and_shrinks_when_idle(ray_cluster, shapes_models, tmp_path):
    """MIN-MAX 1-2: one actor at first; a second once a job has waited longer than one job's time; back
    to one after the idle period, the stopped actor's work folder removed."""
    from loragraph import host
    from loragraph.scaleout.needs import job_needs
    from loragraph.scaleout.pool import Pool
    from loragraph.scaleout.sizing import PoolSize

    host.configure(models_dir=shapes_models, output_dir=tmp_path / "out")
    done = []
    pool = Pool(str(shapes_models), size=PoolSize(1, 2), idle_stop_s=2.0,
                on_done=lambda job, outcome: done.append((job.id, outcome.actor)))
    sizes = []
    try:
        pool.start()
        assert pool.bounds == (1, 2) and pool.alive_count() == 1
        prompts = [workflow(LORAS[i % 3], i, "grow") for i in range(12)]
        for prompt in prompts:
            prompt["3"]["inputs"]["steps"] = 30  # the queue outlasts a second actor's start
        for i, prompt in enumerate(prompts):
            pool.submit(routing.Job(i, job_needs(prompt), {"prompt": prompt}))
        deadline = time.monotonic() + 300
        while len(done) < len(prompts) and time.monotonic() < deadline:
            sizes.append(pool.alive_count())
            time.sleep(0.1)
        assert sorted(i for i, _ in done) == list(range(len(prompts)))
        assert max(sizes) == 2, sizes  # it grew
        assert {actor for _, actor in done} == {"a0", "a1"}  # and the new actor took work
        while pool.alive_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pool.alive_count() == 1  # idle for 2 s: back to MIN
        stopped = [info for info in pool.actors.values() if info.retired]
        assert len(stopped) == 1 and not Path(stopped[0].work_dir).exists()
    finally:
        pool.shutdown()
    assert not any(Path(info.work_dir).exists() for info in pool.actors.values())


def test_gpu_placement_one_actor_per_gpu(shapes_models, tmp_path):
    """Where a GPU exists: the pool's actors take one GPU each (num_gpus=1) and render on it."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: GPU placement (num_gpus=1 per actor) is checked where one exists")
    ray = pytest.importorskip("ray")
    from loragraph import host
    from loragraph.scaleout.needs import job_needs
    from loragraph.scaleout.pool import Pool

    host.configure(models_dir=shapes_models, output_dir=tmp_path / "out")
    done = []
    pool = Pool(str(shapes_models), on_done=lambda job, outcome: done.append(outcome))
    pool.start()
    try:
        assert pool._options["num_gpus"] == 1 and len(pool.actors) == int(ray.cluster_resources()["GPU"])
        prompt = workflow()
        prompt["1"]["inputs"]["device"] = "cuda"
        pool.submit(routing.Job(0, job_needs(prompt), {"prompt": prompt}))
        pool.close()
        for info in pool.actors.values():
            info.thread.join(300)
    finally:
        pool.shutdown()
    assert done and done[0].result["result"].ok, done
