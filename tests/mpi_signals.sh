#!/bin/sh
# Signals to a distributed `loom run` under OpenMPI's mpirun (docs/distributed.md):
#   mpi_signals.sh sigint|sigkill MPIEXEC LOOM CONFIG OUT
# sigint: SIGINT to mpirun stops both ranks after the same batch, the master
#   writes last.h5 once, both ranks exit with 130, and `mpirun loom run
#   --resume last` completes the run.
# sigkill: rank 1 killed with SIGKILL: mpirun ends with a non-zero status
#   within 30 s, and the last.h5 left on disk resumes under mpirun and
#   completes.
# mpirun gives the ranks SIGTERM odls_base_sigkill_timeout seconds after its
# own SIGINT, and SIGKILL as long after that: 5 s (for sigint
# $LOOM_TEST_SIGKILL_TIMEOUT if set: the sanitizer build's ranks exit slowly).
set -u
what=$1 mpiexec=$2 loom=$3 config=$4 out=$5
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$out"
mkdir -p "$out"
run="$out/run"
wait_s=5 # after a SIGKILL the others are killed anyway: no exit to wait for
[ "$what" = sigint ] && wait_s=${LOOM_TEST_SIGKILL_TIMEOUT:-10} # room for a loaded machine
mpi="$mpiexec --mca odls_base_sigkill_timeout $wait_s -n 2"
fail() {
  echo "FAIL: $*"
  echo "--- mpirun's output:"
  cat "$out/out.txt" 2>/dev/null
  for f in "$out"/rank*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  exit 1
}
# Polls for up to $1 seconds until command $2... succeeds.
within() {
  limit=$1
  shift
  t=0
  while ! "$@"; do
    [ $t -ge $((limit * 5)) ] && return 1
    sleep 0.2
    t=$((t + 1))
  done
}
running() { ! kill -0 "$pid" 2>/dev/null; }
epochs_done() { [ -f "$run/checkpoints/last.h5" ] && [ "$(grep -c '"loader":"valid"' "$run/metrics.jsonl" 2>/dev/null)" -ge 2 ]; }
forever="--set stages.train.num_epochs=1000000"

if [ "$what" = sigint ]; then
  $mpi sh "$here/mpi_rank.sh" "$out" "$loom" run "$config" --logdir "$run" $forever >"$out/out.txt" 2>&1 &
  pid=$!
  within 30 epochs_done || fail "no epoch ended within 30 s"
  kill -INT $pid
  within 60 running || fail "mpirun still runs 60 s after SIGINT"
  wait $pid
  for r in 0 1; do
    [ "$(cat "$out/rank$r.rc" 2>/dev/null)" = 130 ] || fail "rank $r exited with $(cat "$out/rank$r.rc" 2>/dev/null), not 130"
  done
  [ "$(grep -c 'checkpoint saved' "$out/out.txt")" = 1 ] || fail "not one \"checkpoint saved\""
  # Where each rank stopped: "(stage "train", epoch E, loader "L", after batch B)"
  # or "(at the end of epoch E of stage "train")".
  where0=$(grep '^loom: interrupted' "$out/out.txt" | sed 's/^[^(]*(\([^)]*\)).*/\1/')
  where1=$(grep '^\[rank 1\] loom: interrupted' "$out/out.txt" | sed 's/^[^(]*(\([^)]*\)).*/\1/')
  [ -n "$where0" ] && [ "$where0" = "$where1" ] || fail "the ranks stopped at \"$where0\" and \"$where1\""
  epoch=$(echo "$where0" | sed 's/.*epoch \([0-9]*\).*/\1/')
  echo "both ranks stopped at $where0 and exited with 130"
else
  $mpi "$loom" run "$config" --logdir "$run" $forever >"$out/out.txt" 2>&1 &
  pid=$!
  within 30 epochs_done || fail "no epoch ended within 30 s"
  rank1=""
  for p in $(pgrep -P $pid); do
    tr '\0' '\n' <"/proc/$p/environ" | grep -qx OMPI_COMM_WORLD_RANK=1 && rank1=$p
  done
  [ -n "$rank1" ] || fail "rank 1's pid not found among mpirun's children"
  kill -9 "$rank1"
  within 30 running || fail "mpirun still runs 30 s after rank 1's SIGKILL"
  wait $pid
  rc=$?
  [ $rc != 0 ] || fail "mpirun exited with 0 after rank 1's SIGKILL"
  epoch=$(grep -c '"loader":"valid"' "$run/metrics.jsonl")
  echo "mpirun exited with $rc after rank 1's SIGKILL"
fi
# The checkpoint resumes under mpirun, and the run completes one epoch later.
$mpiexec -n 2 "$loom" run "$config" --logdir "$run" --resume last --set stages.train.num_epochs=$((epoch + 1)) \
  >"$out/resume.txt" 2>&1 || { cat "$out/resume.txt"; fail "the resume failed"; }
# One row per epoch: the resume went on from the checkpoint's epoch.
[ "$(grep -c '"loader":"valid"' "$run/metrics.jsonl")" = $((epoch + 1)) ] ||
  fail "metrics.jsonl has $(grep -c '"loader":"valid"' "$run/metrics.jsonl") valid rows, not $((epoch + 1))"
echo "resumed from last.h5 and finished epoch $((epoch + 1))"
