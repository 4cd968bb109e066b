#!/usr/bin/env bash
# The GPU checks of the speed issue, as one prepared run for a session lent a GPU machine
# (DEVELOPERS.md, docs/benchmarks.md "GPU"): the K = 5000 importance-sampled evaluation of
# all 10,000 binarized-MNIST test images for both architectures (target: under 10 s on one
# H100-class GPU) and the training step against the PyTorch example's loop on the same GPU
# (target: >= 5x). Each benchmark prints its targets as met or NOT met.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Runs from the repository root with the python3 on PATH (a CUDA build of torch, with
# numpy, safetensors, tqdm, matplotlib, scipy, scikit-learn and pillow) and src/ on
# PYTHONPATH: nothing is installed. Binarized MNIST's .amat.gz files are read from
# $AEVB_BENCH_DATA (default ../shared/data/binarized_mnist; the files are 3 MB, so they can
# travel with the working tree in an ignored folder, e.g. .bench-data/). Settings for a
# quick try on any machine: DEVICE (default cuda), K, EXAMPLES, REPEATS, STEPS.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 2
device=${DEVICE:-cuda}
k=${K:-5000}
examples=${EXAMPLES:-10000}
repeats=${REPEATS:-3}
steps=${STEPS:-300}
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$py" - "$device" <<'EOF' 2>&1 | tee "$out/device.txt"
import sys, torch
device = torch.device(sys.argv[1])
print("torch", torch.__version__, "python", sys.version.split()[0])
if device.type == "cuda":
    assert torch.cuda.is_available(), "no CUDA device"
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory >> 30, "GiB")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

failed=0
run() {  # name, command...: output to OUTDIR/name.txt and the terminal
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "== $name failed"; failed=1; }
}
for arch in burda pytorch-example; do
    run "eval_$arch" "$py" benchmarks/eval_speed.py --device "$device" --arch "$arch" \
        --k "$k" --examples "$examples" --repeats "$repeats"
done
for arch in pytorch-example burda; do
    run "train_$arch" "$py" benchmarks/train_speed.py --device "$device" --arch "$arch" \
        --repeats "$repeats" --steps "$steps"
done
grep "^target" "$out"/eval_*.txt "$out"/train_*.txt > "$out/targets.txt"
exit $failed
