#!/usr/bin/env bash
# gpu_client_training.py on a GPU machine that reaches no package registry
# (such as the lent H100: Python 3.12 with torch and torchvision, no flwr, no ray).
#
#   bash benchmarks/gpu_offline.sh download .gpu-wheels    # here, with PyPI: the wheels
#   OUT=out bash benchmarks/gpu_offline.sh run .gpu-wheels # there, from the repo root
#
# WHEELS/*.whl         flwr 1.42.0 and what its import chain needs beyond such a machine
# WHEELS/fallback/     protobuf, grpcio, typer, click, rich: installed only where the
#                      machine's own versions fall outside what flwr 1.42 accepts
# WHEELS/extras/       flwr's server-side dependencies, installed only if the import check
#                      fails without them (the ClientApp path does not import them)
# WHEELS/simulation/   ray 2.55.1 (flwr[simulation]'s pin; about 70 MB) and its dependencies,
#                      each installed only if the machine lacks it
# Packages go to /tmp/gpupkgs; the project runs from the repo root through PYTHONPATH.
# The benchmark takes a few minutes (five parts; three start a Ray simulation).
set -euo pipefail
MODE=${1:?usage: gpu_offline.sh download|run WHEELS}
WHEELS=${2:?usage: gpu_offline.sh download|run WHEELS}

if [ "$MODE" = download ]; then
    get() {  # FOLDER PACKAGE...: wheels for CPython 3.12 on x86_64 Linux, no dependencies
        local folder=$1
        shift
        mkdir -p "$folder"
        for package in "$@"; do
            python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$folder" \
                --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
                --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
                --platform any "$package"
        done
    }
    get "$WHEELS" flwr==1.42.0 cryptography cffi pycparser pycryptodome iterators \
        "grpcio-health-checking<1.82" tomli tomli-w prompt-toolkit wcwidth
    get "$WHEELS/fallback" "protobuf>=6.33.5,<7" "grpcio>=1.81.1,<2" "typer<0.21" "click<9" \
        "rich<15"
    get "$WHEELS/extras" sqlalchemy greenlet alembic mako fastapi starlette pydantic \
        pydantic-core annotated-types typing-inspection annotated-doc uvicorn
    get "$WHEELS/simulation" ray==2.55.1 msgpack jsonschema jsonschema-specifications \
        referencing rpds-py attrs filelock pyyaml requests urllib3 idna charset-normalizer certifi
    exit 0
fi
[ "$MODE" = run ] || { echo "unknown mode $MODE: use download or run" >&2; exit 2; }
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"

TARGET=/tmp/gpupkgs
PY=${PYTHON:-python3}
if ! "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' 2>/dev/null \
    && [ -x /opt/torch/.venv/bin/python3 ]; then
    PY=/opt/torch/.venv/bin/python3
fi
PYPATH="$TARGET:$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "python: $(command -v "$PY") ($("$PY" --version 2>&1))"
    "$PY" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "torchvision", "numpy", "grpcio", "protobuf", "typer", "click", "rich", "packaging", "pathspec"):
    try:
        print(f"  machine {name} {version(name)}")
    except PackageNotFoundError:
        print(f"  machine {name} MISSING")
EOF

    rm -rf "$TARGET"
    "$PY" -m pip install --disable-pip-version-check --no-index --no-deps --target "$TARGET" "$WHEELS"/*.whl

    # Machine packages outside the ranges flwr 1.42.0 / grpcio-health-checking 1.81.1 need
    # (an older protobuf or grpcio fails the generated-code version checks at import).
    FALLBACK=$("$PY" - <<'EOF'
import re
from importlib.metadata import PackageNotFoundError, version

def key(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])

need = {"protobuf": ("6.33.5", "7"), "grpcio": ("1.81.1", "2"), "typer": ("0.13", "0.21"),
        "click": ("8", "9"), "rich": ("14", "15")}  # [low, high)
out = []
for name, (low, high) in need.items():
    try:
        ok = key(low) <= key(version(name)) < key(high)
    except PackageNotFoundError:
        ok = False
    if not ok:
        out.append(name)
print(" ".join(out))
EOF
)
    if [ -n "$FALLBACK" ]; then
        echo "installing fallback wheels for: $FALLBACK"
        files=()
        for name in $FALLBACK; do files+=("$WHEELS"/fallback/"$name"-*.whl); done
        "$PY" -m pip install --disable-pip-version-check --no-index --no-deps --target "$TARGET" "${files[@]}"
    fi

    # ray and its dependencies, each only where the machine lacks the distribution
    MISSING=""
    [ -d "$WHEELS/simulation" ] && MISSING=$("$PY" - "$WHEELS"/simulation/*.whl <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

for wheel in sys.argv[1:]:
    name = Path(wheel).name.split("-")[0]
    try:
        version(name)
    except PackageNotFoundError:
        print(wheel)
EOF
)
    if [ -n "$MISSING" ]; then
        echo "installing simulation wheels:" $MISSING
        # shellcheck disable=SC2086
        "$PY" -m pip install --disable-pip-version-check --no-index --no-deps --target "$TARGET" $MISSING
    fi

    check() {
        PYTHONPATH="$PYPATH" "$PY" -c 'import flwr, ray, fedforget.task, clients.client_app, fedforget.simulation, flwr.simulation; print("imports ok", flwr.__version__, "ray", ray.__version__)'
    }
    if ! check; then
        echo "import check failed: adding $WHEELS/extras and retrying"
        "$PY" -m pip install --disable-pip-version-check --no-index --no-deps --target "$TARGET" "$WHEELS"/extras/*.whl
        check
    fi

    nvidia-smi -L
} 2>&1 | tee "$OUT/gpu_setup.log"

PYTHONPATH="$PYPATH" "$PY" benchmarks/gpu_client_training.py --rounds 4 --out "$OUT" 2>&1 \
    | tee "$OUT/gpu_run.log"
