#!/usr/bin/env bash
# Install the benchmark peers into their own virtual environments under bench/.venvs/ (git-ignored),
# never into the project's: `bash bench/peers/setup.sh [uvfast|ray|mlserver|tools ...]` (all when
# none is named). Idempotent: an environment whose stamp matches its requirements is left alone, so
# a second run takes well under a second.
#
#   uvfast    uvloop + httptools in a plain folder (pip --target): put on PYTHONPATH, uvicorn's
#             "auto" loop and parser pick them, for the bare app and for modelfleet alike
#   ray       Ray Serve (with its HAProxy binary package) + the model's scikit-learn
#   mlserver  MLServer + mlserver-sklearn; uvloop pinned below 0.22 (MLServer 1.7.1's workers
#             crash with newer ones)
#   tools     py-spy, to profile a server under load
#
# scikit-learn, joblib and numpy are pinned to the project environment's versions so every server
# unpickles the very same model files.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENVS="$ROOT/bench/.venvs"
MAIN_PY="${MODELFLEET_PYTHON:-$ROOT/.venv/bin/python}"
mkdir -p "$VENVS"

version() { "$MAIN_PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
BASE_PY="$("$MAIN_PY" -c 'import sys; print(sys._base_executable)')"
MODEL_PINS="scikit-learn==$(version scikit-learn) joblib==$(version joblib) numpy==$(version numpy)"

requirements() {
  case "$1" in
    uvfast) echo "uvloop==0.23.0 httptools==0.9.0" ;;
    ray) echo "ray[serve]==2.60.0 $MODEL_PINS" ;;
    mlserver) echo "mlserver==1.7.1 mlserver-sklearn==1.7.1 uvloop==0.21.0 $MODEL_PINS" ;;
    tools) echo "py-spy==0.4.3" ;;
    *) echo "unknown peer: $1" >&2; return 2 ;;
  esac
}

install() {
  local name="$1" reqs stamp target
  reqs="$(requirements "$name")"
  target="$VENVS/$name"
  stamp="$target/.bench-stamp"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$reqs" ]]; then
    echo "$name: up to date"
    return 0
  fi
  echo "$name: installing $reqs"
  rm -rf "$target"
  # shellcheck disable=SC2086 # the requirement list is split on purpose
  if [[ "$name" == uvfast ]]; then
    "$MAIN_PY" -m pip install --quiet --target "$target" $reqs
  else
    "$BASE_PY" -m venv "$target"
    "$target/bin/python" -m pip install --quiet $reqs
  fi
  echo "$reqs" > "$stamp"
}

peers=("$@")
[[ ${#peers[@]} -eq 0 ]] && peers=(uvfast ray mlserver tools)
for peer in "${peers[@]}"; do
  started=$SECONDS
  install "$peer"
  echo "$peer: ready in $((SECONDS - started)) s"
done
