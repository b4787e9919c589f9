#!/bin/bash
# tests/cluster/down.sh -- stop exactly the daemons tests/cluster/up.sh started, through their PID files.
#   --purge : also delete Slurm state/spool/logs, the MariaDB datadir and the Grid Engine cell
#             (keys, munge key and the unpacked Grid Engine binaries kept)
set -uo pipefail
B=${HPC_CLUSTER_DIR:-/tmp/airflow-hpc-cluster}
export SLURM_CONF=$B/slurm/etc/slurm.conf
SGE_SETTINGS=$B/sge/default/common/settings.sh

# a daemon's zombie lingers until PID 1 reaps it (slowly in this sandbox): treat Z as gone
running() { kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* ([^)]*) Z' /proc/$1/stat 2>/dev/null; }

# pidfile:expected-comm, in shutdown order
DAEMONS=(
  "$B/ssh/sshd.pid:sshd"
  "$(ls $B/sge/default/spool/execd/*/execd.pid 2>/dev/null | head -1):sge_execd"
  "$B/sge/default/spool/qmaster/qmaster.pid:sge_qmaster"
  "$B/slurm/run/slurmd.pid:slurmd"
  "$B/slurm/run/slurmctld.pid:slurmctld"
  "$B/slurm/run/slurmdbd.pid:slurmdbd"
  "$B/mysql/run/mysqld.pid:mariadbd"
  "$B/munge/run/munged.pid:munged"
)

# cancel jobs first so their slurmstepd processes (children of our slurmd) exit cleanly
if [ -s $B/slurm/run/slurmctld.pid ] && running "$(cat $B/slurm/run/slurmctld.pid)"; then
  ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${ids// /}" ]; then
    echo "[down] cancelling jobs: $ids"; scancel $ids 2>/dev/null
    for i in $(seq 1 50); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

# the same for Grid Engine: delete every job while sge_execd is there to kill its shepherds
if [ -s $B/sge/default/spool/qmaster/qmaster.pid ] && running "$(cat $B/sge/default/spool/qmaster/qmaster.pid)"; then
  ( . $SGE_SETTINGS
    ids=$(qstat -u '*' 2>/dev/null | awk 'NR > 2 { print $1 }' | sort -u | tr '\n' ' ')
    if [ -n "${ids// /}" ]; then
      echo "[down] deleting grid engine jobs: $ids"; qdel -f $ids >/dev/null 2>&1
      for i in $(seq 1 50); do [ -z "$(qstat -u '*' 2>/dev/null)" ] && break; sleep 0.2; done
    fi )
fi

for entry in "${DAEMONS[@]}"; do
  pf=${entry%%:*}; name=${entry##*:}
  [ -s "$pf" ] || continue
  pid=$(cat "$pf")
  if ! running "$pid"; then rm -f "$pf"; continue; fi
  comm=$(cat /proc/$pid/comm 2>/dev/null || true)
  if [ "$comm" != "$name" ]; then echo "[down] $pf: pid $pid is '$comm', not $name -- not touching it"; continue; fi
  # sge_qmaster's controlled shutdown takes about 9 s here; the others stop within 5 s
  patience=5; [ "$name" = sge_qmaster ] && patience=20
  t=${EPOCHREALTIME/./}; kill -TERM "$pid"
  for i in $(seq 1 $((patience * 20))); do running "$pid" || break; sleep 0.05; done
  if running "$pid"; then echo "[down] $name ($pid) ignored TERM for ${patience}s, sending KILL"; kill -KILL "$pid"; fi
  rm -f "$pf"
  echo "[down] stopped $name ($pid) in $(( (${EPOCHREALTIME/./} - t) / 1000 ))ms"
done
rm -f $B/munge/run/munge.socket.2 $B/munge/run/munge.socket.2.lock

# best-effort removal of the (now empty) slurm cgroup v1 hierarchy created by slurmd
for d in /sys/fs/cgroup/*/slurm_$(hostname -s); do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
done

if [ "${1:-}" = "--purge" ]; then
  rm -rf $B/slurm/state $B/slurm/spool $B/slurm/log $B/slurm/jobs $B/mysql/data $B/mysql/log $B/sge
  echo "[down] purged slurm state/spool/logs, mariadb datadir and the grid engine cell"
fi
exit 0
