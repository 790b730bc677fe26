#!/usr/bin/env bash
# Train the default bundle end to end (issue 4): corpus, then every recipe in order.
# Every step is resumable: rerun this script after an interruption and each stage continues from its
# checkpoints (finished stages return at once). Run from the repository root; the corpus goes to
# ../corpus (what configs/*.yaml read). Log per stage under runs/<stage>.log.
#   bash models/train_default.sh            # everything
#   STAGES="ctc speechlm" bash models/train_default.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CORPUS=${CORPUS:-../corpus}
HOURS=${HOURS:-12}
STAGES=${STAGES:-"corpus text-lm encoder-ssl ctc speechlm sylber ctc-scratch speechlm-full"}
mkdir -p runs

stamp() { date -u +%FT%TZ; }
run_stage() {  # name, command...
  local name=$1; shift
  echo "$(stamp) start $name: $*" | tee -a runs/chain.log
  local t0=$SECONDS
  "$@" >>"runs/$name.log" 2>&1
  echo "$(stamp) done $name in $(( (SECONDS - t0) / 60 )) min" | tee -a runs/chain.log
}

for stage in $STAGES; do
  case $stage in
    corpus)        run_stage corpus "$BIN/spokenlm" data synth --out "$CORPUS" --hours "$HOURS" --seed 0 --workers 2 ;;
    text-lm)       run_stage text-lm "$BIN/spokenlm" train text-lm --config configs/text_lm.yaml ;;
    encoder-ssl)   run_stage encoder-ssl "$BIN/spokenlm" train encoder-ssl --config configs/encoder_ssl.yaml ;;
    ctc)           run_stage ctc "$BIN/spokenlm" train ctc --config configs/ctc.yaml ;;
    speechlm)      run_stage speechlm "$BIN/spokenlm" train speechlm --config configs/speechlm.yaml ;;
    sylber)        run_stage sylber "$BIN/spokenlm" train sylber --config configs/sylber.yaml ;;
    ctc-scratch)   run_stage ctc-scratch "$BIN/spokenlm" train ctc --config configs/ctc_scratch.yaml ;;
    speechlm-full) run_stage speechlm-full "$BIN/spokenlm" train speechlm --config configs/speechlm_full.yaml ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
