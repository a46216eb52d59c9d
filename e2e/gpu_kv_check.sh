#!/usr/bin/env bash
# Same-GPU KV transfer figures: NIXL VRAM -> VRAM between two processes on one GPU, per UCX_TLS
# setting, against a device-to-device copy (the target: at least half of it).
#
#   bash e2e/gpu_kv_check.sh prepare   # here (has PyPI): wheels into .whl/, generated gRPC code
#   bash e2e/gpu_kv_check.sh run       # on the GPU machine (no network): JSON into $OUT (or .)
#
# For a GPU machine without network access whose Python (3.12) has torch for CUDA 13 but no NIXL:
# `prepare` fetches nixl_cu13 (without its expert-parallel kernels) and the grpcio/protobuf
# versions the generated code (committed in worker/baton_worker/proto) needs; carry `.whl` with the
# run. What the settings mean: docs/kv-transfer.md, "UCX settings"; the bench: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-16,64,256,1024}
# UCX's stock behaviour first (baton's GPU default, UCX_CUDA_IPC_ENABLE_GET_ZCOPY=on, undone), then
# baton's default, then transport lists with and without it.
STOCK=UCX_CUDA_IPC_ENABLE_GET_ZCOPY=auto
SETTINGS=${SETTINGS:-"default+$STOCK;default;cuda_ipc,cuda_copy,tcp,self;cuda_ipc,cuda_copy,tcp,self+$STOCK;cuda_ipc,cuda_copy,tcp,sm,self;cuda_copy,tcp,self"}

case "${1:-}" in
prepare)
    rm -rf .whl && mkdir -p .whl
    plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${plat[@]}" -d .whl \
        nixl_cu13==1.5.1 grpcio==1.85.3 protobuf==7.36.2
    # Drop NIXL's expert-parallel kernels (nixl_ep_cu13: three 31 MB builds, one per torch
    # version), which baton does not use: the rest stays under 64 MiB to carry to the GPU machine.
    python3 - <<'PY'
import glob, os, zipfile
src = glob.glob(".whl/nixl_cu13-*.whl")[0]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.startswith("nixl_ep_cu13/"):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(True) if not line.startswith(b"nixl_ep_cu13/"))
        zout.writestr(item, data)
os.replace(src + ".tmp", src)
PY
    du -sh .whl
    ;;
run)
    out=${OUT:-.}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/worker PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
    python3 -c "import nixl_cu13, torch; print('nixl ok; torch', torch.__version__, torch.cuda.get_device_name())"
    python3 -m baton_dev.bench.kv --json --device cuda --sizes "$SIZES" --backends nixl,memcpy \
        --repeats 5 --ucx-tls "$SETTINGS" --setting-timeout-s 90 | tee "$out/kv_same_gpu.json"
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
