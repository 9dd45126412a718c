#!/usr/bin/env bash
# One job at a time: export the inputs, run TESLA and the reference TriHRGE code on every
# section/seed, then train our model on the same splits and print the scored table.
#   SECTIONS="her2st/C3 her2st/C5 dlpfc_151673" SEEDS="1 2 3" SPAMCAF_EPOCHS=100 \
#       SPAMCAF_SNAPSHOTS=25,50 bash benchmarks/peers/run_all.sh
# Needs: the project's environment active (python with napari_trihrge), setup_tesla.sh and
# setup_spamcaf.sh run, SPAMCAF_SRC = a checkout of github wenwenmin/SpaMCAF (outside the repo).
# Logs (with /usr/bin/time -v: wall time and peak memory of each child) in .work/logs/.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SECTIONS=${SECTIONS:-"dlpfc_151673 her2st/C2 her2st/C3 her2st/C4 her2st/C5"}
SEEDS=${SEEDS:-"1 2 3"}
SPAMCAF_EPOCHS=${SPAMCAF_EPOCHS:-100}
SPAMCAF_SNAPSHOTS=${SPAMCAF_SNAPSHOTS:-""}   # epochs after which the reference code's model is scored too
SPAMCAF_SRC=${SPAMCAF_SRC:-"$here/.envs/spamcaf-src"}
STEPS=${STEPS:-"export tesla spamcaf ours"}
logs="$here/.work/logs"; mkdir -p "$logs"
run() {  # name, command...
    local name=$1; shift
    echo "[$(date -u +%H:%M:%S)] $name" >&2
    nice -n 15 /usr/bin/time -v "$@" > "$logs/$name.log" 2>&1 || echo "  $name failed (see $logs/$name.log)" >&2
}
csv() { echo "$1" | tr ' ' ','; }
for step in $STEPS; do
  for sec in $SECTIONS; do
    dir=${sec//\//_}
    case $step in
      export) run "export_$dir" python "$here/export_inputs.py" --sections "$sec" --seeds "$(csv "$SEEDS")" ;;
      tesla) for s in $SEEDS; do
          [ -f "$here/.work/$dir/tesla_seed$s.npz" ] || run "tesla_${dir}_seed$s" \
              "$here/.envs/tesla/bin/python" "$here/run_tesla.py" "$dir" --seed "$s"; done ;;
      spamcaf) for s in $SEEDS; do
          [ -f "$here/.work/$dir/spamcaf_seed$s.npz" ] || run "spamcaf_${dir}_seed$s" \
              "$here/.envs/spamcaf/bin/python" "$here/run_spamcaf.py" "$dir" --seed "$s" \
              --epochs "$SPAMCAF_EPOCHS" --snapshots "$SPAMCAF_SNAPSHOTS" --src "$SPAMCAF_SRC"; done ;;
      ours) run "ours_$dir" nice -n 15 python "$here/score.py" --sections "$sec" --seeds "$(csv "$SEEDS")" --run-ours ;;
    esac
  done
done
nice -n 15 python "$here/score.py" --sections "$(echo $SECTIONS | tr ' ' ',')" --seeds "$(csv "$SEEDS")" \
    --json "$here/.work/peers_table.json"
