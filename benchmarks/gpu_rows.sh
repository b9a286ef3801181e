#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md, for a session lent an accelerator machine (the workplace's `device` tool):
# its image has jax (CUDA), flax, optax and scikit-learn but no network, so the repository runs from its tree
# (PYTHONPATH) with the image's python3, nothing installed. One step per call, each well inside the 10-minute
# limit of one command; results and logs land in $OUT (what the device tool brings back).
#
#   run(command="bash benchmarks/gpu_rows.sh fold")    # ResNet18 fold: cold / cached / warm vs sklearn
#   run(command="bash benchmarks/gpu_rows.sh llm7b")   # LLaMA-7B-shaped recipe fold (≤ 60 s target: docs/benchmarks.md)
#   run(command="bash benchmarks/gpu_rows.sh tests")   # the k-means / fold / clustering tests on the GPU
#
# Locally (CPU, the project's venv) the same steps run with PY=.venv/bin/python OUT=/tmp/gpu_rows.
set -uo pipefail
step=${1:?usage: benchmarks/gpu_rows.sh fold|llm7b|tests}
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_rows}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import jax, flax, sys; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
    nproc
} >"$OUT/env_$step.txt" 2>&1
cat "$OUT/env_$step.txt"

case "$step" in
    fold)
        "$PY" -m jaxfold.bench.fold --repeats 3 --out "$OUT/fold_resnet18_w1_gpu.json" 2>&1 | tee "$OUT/fold.log"
        ;;
    llm7b)
        "$PY" benchmarks/llm_fold_7b.py --dtype bfloat16 --target 0.2 --n-init 1 \
            --out "$OUT/llm_fold_7b_gpu.json" 2>&1 | tee "$OUT/llm7b.log"
        ;;
    tests)
        # conftest.py pins tests to the CPU unless JAX_PLATFORMS says otherwise
        JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} "$PY" -m pytest -q -p no:cacheprovider tests/test_kmeans.py \
            tests/test_fold.py tests/test_clustering.py 2>&1 | tee "$OUT/tests.log"
        ;;
    *)
        echo "unknown step '$step': one of fold, llm7b, tests" >&2
        exit 2
        ;;
esac
