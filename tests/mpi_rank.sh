#!/bin/sh
# One rank of a job under mpirun (mpirun -n N sh mpi_rank.sh DIR CMD...):
# runs CMD, passes SIGTERM and SIGINT on to it (mpirun signals the process
# it started, this one), and writes CMD's pid and exit status to
# DIR/rank<R>.pid and DIR/rank<R>.rc, R the rank. CMD runs in a session of
# its own: mpirun signals this process's group, and CMD in that group would
# get each signal twice (from mpirun and from the trap), the second after
# loom has given the signal back to its default action.
dir=$1
shift
rank=${OMPI_COMM_WORLD_RANK:-0}
setsid "$@" &
child=$!
echo $child >"$dir/rank$rank.pid"
trap 'kill -TERM $child' TERM
trap 'kill -INT $child' INT
wait $child
rc=$?
while kill -0 $child 2>/dev/null; do # a trapped signal ended the wait
  wait $child
  rc=$?
done
echo $rc >"$dir/rank$rank.rc"
exit $rc
