#!/usr/bin/env bash
# The GPU variant of benchmarks/lora_ops.py as one prepared run on a lent device machine.
#
#   bash benchmarks/gpu.sh fetch     # here, with the package registry: wheels into .whl/ (git-ignored)
#   bash benchmarks/gpu.sh run [ARGS...]  # there (device tool: carry [".whl"]), ARGS go to lora_ops
#
# The device image has torch with CUDA but no diffusers, and other transformers/peft versions than
# the ones the engine is tested with (pyproject.toml), and nothing can be fetched there. `fetch`
# downloads exactly those as Python 3.12 wheels (the image's Python); `run` installs them into
# /tmp/site ahead of the image's own, makes this checkout importable as `loragraph` without
# installing it, and runs the benchmark in fp16 with the sampling rows. Results go to $OUT (the
# device tool's return folder; benchmarks/results without it): lora_ops_cuda.json, rewritten after
# every row so a run cut off by the lease's time limit keeps what it measured, and the log.
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions CI tests (pyproject.toml). huggingface_hub, tokenizers, safetensors, accelerate and
# psutil are in the image at versions these accept, so they are not carried.
WHEELS=(diffusers==0.42.1 peft==0.21.2 transformers==5.23.0 regex==2026.5.9 importlib_metadata==8.7.0)

case "${1:-run}" in
fetch)
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    ls -l .whl
    ;;
run)
    shift || true
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # The checkout is the package (pyproject: package-dir "loragraph" = "."): a link named loragraph.
    mkdir -p /tmp/loragraph-path
    ln -sfn "$PWD" /tmp/loragraph-path/loragraph
    export PYTHONPATH="/tmp/loragraph-path:$PYTHONPATH" PYTHONUNBUFFERED=1
    out="${OUT:-benchmarks/results}"
    mkdir -p "$out"
    python3 -c 'import torch, diffusers, peft, transformers, loragraph
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "diffusers", diffusers.__version__,
      "peft", peft.__version__, "transformers", transformers.__version__, "loragraph from", loragraph.__file__)'
    device=cuda
    python3 -c 'import torch; raise SystemExit(not torch.cuda.is_available())' || device=cpu
    if [ "$device" = cpu ]; then
        echo "benchmarks/gpu.sh: no CUDA device here; running the same rows on the CPU" >&2
        set -- --dtype float32 "$@"
    else
        set -- --dtype float16 "$@"
    fi
    python3 -m benchmarks.lora_ops --device "$device" --work /tmp/loragraph-bench \
        --json "$out/lora_ops_$device.json" "$@" 2>&1 | tee "$out/lora_ops_$device.log"
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh fetch | run [lora_ops arguments]" >&2
    exit 2
    ;;
esac
