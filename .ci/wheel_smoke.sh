#!/usr/bin/env bash
# The wheel as a user gets it: build it from the files git would ship, install it (not editable) into a fresh venv,
# and use it from outside the checkout, so a file missing from the wheel (the noise table, a task YAML) fails here.
#
# The fresh venv reuses the main venv's installed dependencies without copying them: its site-packages holds a
# symlink to each entry of the main venv's, except corpmerge's own (its editable hook and metadata), and
# the wheel is installed there with --no-deps. The checkout is never on sys.path (checked below).
#   usage: .ci/wheel_smoke.sh            (VENV=.venv by default; KEEP=1 keeps the temporary folder)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(cd "$ROOT" && cd "${VENV:-.venv}" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/corpmerge-wheel.XXXXXX")
[ -n "${KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
SECONDS=0
step() { echo "== wheel smoke (${SECONDS}s): $*"; }

step "build the wheel from a copy of the shipped files"
mkdir "$WORK/src" "$WORK/dist" "$WORK/run"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then  # tracked and untracked-but-not-ignored files
  (cd "$ROOT" && git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) \
    | (cd "$ROOT" && tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
else  # a source tree without .git: everything but venvs, build outputs and caches
  tar -C "$ROOT" --exclude='./.venv*' --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude='*.work' --exclude=./.whl -cf - . | tar -xf - -C "$WORK/src"
fi
"$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src" >/dev/null
WHEEL=$(ls "$WORK"/dist/corpmerge-*.whl)
echo "   $(basename "$WHEEL")"

step "every file under corpmerge/ that git ships is in the wheel"
"$VENV/bin/python" - "$WHEEL" "$WORK/src" <<'EOF'
import sys, zipfile
from pathlib import Path
wheel, src = sys.argv[1], Path(sys.argv[2])
inside = set(zipfile.ZipFile(wheel).namelist())
shipped = {p.relative_to(src).as_posix() for p in (src / "corpmerge").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
missing = sorted(shipped - inside)
if missing:
    sys.exit(f"wheel smoke: {len(missing)} file(s) of corpmerge/ missing from {Path(wheel).name}: {', '.join(missing[:10])} (pyproject.toml [tool.setuptools.package-data])")
print(f"   {len(shipped)} files")
EOF

step "a fresh venv with the main venv's dependencies and the wheel (--no-deps)"
"$VENV/bin/python" -m venv --without-pip "$WORK/venv"
PURELIB='import sysconfig; print(sysconfig.get_paths()["purelib"])'
MAIN_SITE=$("$VENV/bin/python" -c "$PURELIB")
NEW_SITE=$("$WORK/venv/bin/python" -c "$PURELIB")
for entry in "$MAIN_SITE"/*; do
  case "$(basename "$entry")" in corpmerge* | __editable__* | *.egg-link | easy-install.pth) continue ;; esac
  ln -s "$entry" "$NEW_SITE/"
done
"$WORK/venv/bin/python" -m pip install -q --no-deps --no-index "$WHEEL"

cd "$WORK/run"
export PATH="$WORK/venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 CORPMERGE_CACHE="$WORK/cache"
unset PYTHONPATH
PY="$WORK/venv/bin/python"

step "corpmerge is the wheel's, not the checkout's"
"$PY" - "$ROOT" "$NEW_SITE" <<'EOF'
import os, sys
import corpmerge
root, site = (os.path.realpath(p) for p in sys.argv[1:3])
where = os.path.realpath(corpmerge.__file__)
assert where.startswith(site + os.sep), f"corpmerge imported from {where}, not the wheel's {site}"
assert not any(os.path.realpath(p or ".") == root for p in sys.path), f"the checkout {root} is on sys.path"
EOF
VERSION=$(basename "$WHEEL" | cut -d- -f2)
[ "$(corpmerge --version)" = "corpmerge $VERSION" ] || { echo "corpmerge --version says '$(corpmerge --version)', the wheel is $VERSION"; exit 1; }

step "corpmerge tasks lists every shipped task"
listed=$(corpmerge tasks)
for yaml in "$WORK"/src/corpmerge/tasks/*/*.yaml; do
  task=$(basename "$yaml" .yaml)
  grep -q "$task" <<<"$listed" || { echo "corpmerge tasks does not list $task"; echo "$listed"; exit 1; }
done

step "both noise schemes reproduce their recorded digests"
"$PY" -c "from corpmerge.noise import SCHEMES, check_scheme; [check_scheme(s) for s in SCHEMES]; print('  ', ', '.join(SCHEMES))"

step "a tiny model, validated against a shipped task, and merged"
"$PY" - <<'EOF'
import torch, yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
vocab = {ch: i for i, ch in enumerate(alphabet)} | {"<eos>": len(alphabet), "<pad>": len(alphabet) + 1}
tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, eos_token_id=256, pad_token_id=257, bos_token_id=None)
LlamaForCausalLM(config).save_pretrained("base")
PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>").save_pretrained("base")
merge = {"base_model": "base", "merge_method": "corp", "parameters": {"quantile": 0.5, "beta": 10, "alpha": 1},
         "gate": {"enabled": False}, "output": {"path": "merged"},
         "population": [{"seed": s, "sigma": 0.01, "reward": r} for s, r in ((1, 0.4), (2, 0.6), (3, 0.5), (4, 0.7))]}
yaml.safe_dump(merge, open("merge.yaml", "w"))
scored = {"base_model": "base", "population": {"size": 4, "sigmas": [0.01]}, "output": {"path": "scored"},
          "scoring": {"tasks": ["corpmerge_arith"], "support": {"limit": 120}}}
yaml.safe_dump(scored, open("score.yaml", "w"))
EOF
corpmerge validate score.yaml
corpmerge merge merge.yaml
"$PY" - "$VERSION" <<'EOF'
import sys, torch, yaml
from transformers import AutoModelForCausalLM
lineage = yaml.safe_load(open("merged/corpmerge.yaml"))
assert lineage["corpmerge_version"] == sys.argv[1], lineage["corpmerge_version"]
base, merged = (AutoModelForCausalLM.from_pretrained(p) for p in ("base", "merged"))
moved = [n for n, p in merged.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
assert moved, "the merged model equals its base"
print(f"   {len(moved)} tensors moved; corpmerge_version {lineage['corpmerge_version']}")
EOF
step "passed"
