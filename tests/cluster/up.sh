#!/bin/bash
# tests/cluster/up.sh -- bring up the project's local test cluster, idempotently, as root:
# munge, MariaDB + slurmdbd (so sacct answers), slurmctld + slurmd, the Torque-style
# qsub/qstat/qdel wrappers, tmux, an OpenSSH sshd on 127.0.0.1:2222 that plays the
# login node (key-only, unprivileged user, OpenSSH's default MaxStartups/MaxSessions so
# the provider is tested against the limits a real login node keeps), and a single-node
# Grid Engine (sge_qmaster + sge_execd, tests/cluster/gridengine.sh) for its own test user.
# Everything lives under $HPC_CLUSTER_DIR (default /tmp/airflow-hpc-cluster); every
# daemon binds 127.0.0.1 (Grid Engine's cannot be told to: see gridengine.sh) and is stopped
# by tests/cluster/down.sh through its PID file.
# Running it again leaves live daemons alone and restarts one only if its config changed.
# It ends by writing $HPC_CLUSTER_DIR/airflow.env: the Airflow connections `slurm_local`,
# `pbs_local` and `sge_local`.
#   HPCINFRA_DBD=1|0        mariadb+slurmdbd so sacct works (default 1)
#   HPCINFRA_CGROUP=auto|1|0 proctrack/task cgroup v1 (OOM, step cleanup) (default auto)
#   HPCINFRA_CPUS=N         CPUs advertised for the node (config_overrides; default 32, far more than
#                           the machine has, so tests' mostly idle jobs run at once instead of queueing)
#   HPCINFRA_MEM=MB         RealMemory advertised (default 16000)
#   HPCINFRA_USER=name      non-root ssh/job user, created if missing (default hpcuser)
#   HPCINFRA_SGE=1|0        Grid Engine (default 1; its other settings: tests/cluster/gridengine.sh)
#   HPCINFRA_CLOUDPICKLE=V  cloudpickle release installed (pip --user) for the test user's python3 (default 3.1.3)
set -euo pipefail
B=${HPC_CLUSTER_DIR:-/tmp/airflow-hpc-cluster}
DBD=${HPCINFRA_DBD:-1}; CG=${HPCINFRA_CGROUP:-auto}; GE=${HPCINFRA_SGE:-1}
CPUS=${HPCINFRA_CPUS:-32}; MEM=${HPCINFRA_MEM:-16000}; TUSER=${HPCINFRA_USER:-hpcuser}
SSH_PORT=2222; DB_PORT=3307; HOST=$(hostname -s)
export SLURM_CONF=$B/slurm/etc/slurm.conf
# One up.sh at a time (the test suite runs two pytest processes side by side, and each may call it).
# flock -o holds the lock in its own process: the daemons started below must not inherit it.
if [ "${_AIRFLOW_HPC_UP_LOCKED:-}" != 1 ]; then
  mkdir -p "$B"
  _AIRFLOW_HPC_UP_LOCKED=1 exec flock -o "$B/.up.lock" bash "$0" "$@"
fi
unset _AIRFLOW_HPC_UP_LOCKED
T0=${EPOCHREALTIME/./}
log()   { local us=$(( ${EPOCHREALTIME/./} - T0 )); printf '[up +%d.%02ds] %s\n' $((us / 1000000)) $((us % 1000000 / 10000)) "$*"; }
# zombies linger until PID 1 reaps them (slowly in this sandbox), so 'Z' counts as dead
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$(cat "$1")/stat" 2>/dev/null; }
waitf() { local what=$1 n=$2; shift 2; for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
          echo "up.sh: timed out waiting for $what" >&2; return 1; }
# write file only if content differs; returns 0 if changed
put()   { local f=$1 tmp; tmp=$(mktemp); cat >"$tmp"; if [ -f "$f" ] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; return 1; fi
          mv "$tmp" "$f"; chmod "${2:-644}" "$f"; return 0; }

# ---------- 0. packages (only if missing) ----------
pkgs=(slurmctld slurmd slurm-client slurm-wlm-torque munge tmux openssh-server)
[ "$DBD" = 1 ] && pkgs+=(slurmdbd mariadb-server)
# Grid Engine's own packages conflict with slurm-wlm-torque and are unpacked instead (gridengine.sh);
# these are the libraries its binaries link
[ "$GE" = 1 ] && pkgs+=(libjemalloc2 libhwloc15 libtirpc3 libmunge2)
missing=(); for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
PLUGDIR=$(dirname "$(ls /usr/lib/*/slurm-wlm/spank_pbs.so | head -1)")

getent hosts "$HOST" | grep -q '^127\.' || echo "up.sh: WARNING: $HOST does not resolve to 127.x; daemons bind to what it resolves to" >&2

mkdir -p $B/munge/{etc,run,log,lib} $B/slurm/{etc,state,spool,run,log,jobs} $B/ssh/authorized_keys.d $B/home $B/mysql/{data,run,log}
chmod 700 $B/munge/etc $B/munge/lib $B/munge/log; chmod 755 $B/munge/run $B/ssh $B/ssh/authorized_keys.d

# ---------- 1. test user ----------
if ! id "$TUSER" >/dev/null 2>&1; then useradd -m -d $B/home/$TUSER -s /bin/bash -U "$TUSER"; fi
usermod -p '*' "$TUSER"   # '!' (locked) makes sshd with UsePAM=no refuse even key logins

# ---------- 2. munge ----------
[ -s $B/munge/etc/munge.key ] || { dd if=/dev/urandom of=$B/munge/etc/munge.key bs=1024 count=1 2>/dev/null; chmod 400 $B/munge/etc/munge.key; }
MSOCK=$B/munge/run/munge.socket.2
if ! alive $B/munge/run/munged.pid; then
  rm -f $MSOCK $MSOCK.lock
  munged --key-file=$B/munge/etc/munge.key --socket=$MSOCK --pid-file=$B/munge/run/munged.pid \
         --log-file=$B/munge/log/munged.log --seed-file=$B/munge/lib/munged.seed --num-threads=4
  waitf munged 50 bash -c "munge -S $MSOCK -n | unmunge -S $MSOCK"
  log "munged up (pid $(cat $B/munge/run/munged.pid))"
fi

# ---------- 3. slurm configs ----------
if [ "$CG" = auto ]; then
  CG=0
  if [ -d /sys/fs/cgroup/memory ] && [ -d /sys/fs/cgroup/freezer ] && [ ! -e /sys/fs/cgroup/cgroup.controllers ] \
     && mkdir /sys/fs/cgroup/memory/hpcinfra_probe 2>/dev/null && rmdir /sys/fs/cgroup/memory/hpcinfra_probe; then CG=1; fi
fi
if [ "$CG" = 1 ]; then PT=proctrack/cgroup; TP=task/cgroup; JAG=jobacct_gather/cgroup
else PT=proctrack/linuxproc; TP=task/none; JAG=jobacct_gather/linux; fi
if [ "$DBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStoragePass=$MSOCK
AccountingStoreFlags=job_comment
AccountingStorageEnforce=associations"
else ACCT="AccountingStorageType=accounting_storage/none"; fi

changed=0
put $B/slurm/etc/slurm.conf <<EOF && changed=1 || true
# generated by tests/cluster/up.sh
ClusterName=hpcinfra
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
SrunPortRange=60001-60200
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
AuthInfo=socket=$MSOCK
CredType=cred/munge
StateSaveLocation=$B/slurm/state
SlurmdSpoolDir=$B/slurm/spool
SlurmctldPidFile=$B/slurm/run/slurmctld.pid
SlurmdPidFile=$B/slurm/run/slurmd.pid
SlurmctldLogFile=$B/slurm/log/slurmctld.log
SlurmdLogFile=$B/slurm/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$B/slurm/etc/plugstack.conf
MailProg=/bin/true
MpiDefault=none
ProctrackType=$PT
TaskPlugin=$TP
JobAcctGatherType=$JAG
JobAcctGatherFrequency=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=200000,bf_interval=5
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=86400
# Ended jobs stay listed for a day (MinJobAge): room for a day of benches and test runs on one machine.
MaxJobCount=200000
# Small on purpose: mapped tasks become job arrays cut into chunks of at most 6 (docs/arrays.rst).
MaxArraySize=${HPC_MAX_ARRAY_SIZE:-6}
KillWait=2
OverTimeLimit=0
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=300
JobCompType=jobcomp/filetxt
JobCompLoc=$B/slurm/log/jobcomp.txt
$ACCT
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE DefMemPerCPU=100 State=UP
PartitionName=long Nodes=$HOST MaxTime=INFINITE DefMemPerCPU=100 State=UP
EOF
put $B/slurm/etc/cgroup.conf <<EOF && changed=1 || true
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainCores=no
ConstrainDevices=no
AllowedRAMSpace=100
EOF
put $B/slurm/etc/plugstack.conf <<EOF && changed=1 || true
optional $PLUGDIR/spank_pbs.so
EOF
if [ "$DBD" = 1 ]; then
  put $B/slurm/etc/slurmdbd.conf 600 <<EOF && changed=1 || true
AuthType=auth/munge
AuthInfo=socket=$MSOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
CommunicationParameters=NoInAddrAny
SlurmUser=root
DebugLevel=info
LogFile=$B/slurm/log/slurmdbd.log
PidFile=$B/slurm/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
fi
if [ $changed = 1 ]; then
  for d in slurmd slurmctld slurmdbd; do
    if alive $B/slurm/run/$d.pid; then p=$(cat $B/slurm/run/$d.pid); log "config changed: restarting $d"; kill "$p"
      waitf "$d exit" 100 bash -c "! kill -0 $p || grep -q '^[0-9]* ([^)]*) Z' /proc/$p/stat"; fi
  done
fi

# ---------- 4. mariadb + slurmdbd ----------
if [ "$DBD" = 1 ]; then
  put $B/mysql/my.cnf <<EOF || true
[mysqld]
datadir=$B/mysql/data
socket=$B/mysql/run/mysqld.sock
pid-file=$B/mysql/run/mysqld.pid
log-error=$B/mysql/log/error.log
bind-address=127.0.0.1
port=$DB_PORT
user=root
skip-name-resolve
innodb_buffer_pool_size=128M
innodb_lock_wait_timeout=900
[client]
socket=$B/mysql/run/mysqld.sock
EOF
  if [ ! -d $B/mysql/data/mysql ]; then
    mariadb-install-db --no-defaults --datadir=$B/mysql/data --user=root --auth-root-authentication-method=normal \
        --skip-test-db >$B/mysql/log/install.log 2>&1
    log "mariadb datadir initialised"
  fi
  if ! alive $B/mysql/run/mysqld.pid; then
    nohup mariadbd --defaults-file=$B/mysql/my.cnf >>$B/mysql/log/stdout.log 2>&1 </dev/null &
    waitf mariadb 300 mariadb-admin --defaults-file=$B/mysql/my.cnf -uroot ping
    log "mariadb up (pid $(cat $B/mysql/run/mysqld.pid))"
  fi
  mariadb --defaults-file=$B/mysql/my.cnf -uroot <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
  if ! alive $B/slurm/run/slurmdbd.pid; then
    slurmdbd
    waitf slurmdbd 300 bash -c "ss -ltn | grep -q '127.0.0.1:6819 '"
    log "slurmdbd up (pid $(cat $B/slurm/run/slurmdbd.pid))"
  fi
fi

# ---------- 5. slurmctld + slurmd ----------
if ! alive $B/slurm/run/slurmctld.pid; then
  slurmctld -f $SLURM_CONF
  waitf slurmctld 300 bash -c "scontrol ping | grep -q UP"
  log "slurmctld up (pid $(cat $B/slurm/run/slurmctld.pid))"
fi
if [ "$DBD" = 1 ]; then  # associations so -A/--account are honoured (idempotent)
  waitf "cluster registration" 100 bash -c "sacctmgr -n list cluster format=cluster | grep -q hpcinfra"
  assoc=$(sacctmgr -n -P show assoc format=account,user 2>/dev/null)
  if ! grep -qx "testacct|$TUSER" <<<"$assoc"; then
    sacctmgr -i -Q add account myacct,testacct >/dev/null 2>&1 || true
    sacctmgr -i -Q add user root,"$TUSER" account=myacct,testacct defaultaccount=myacct >/dev/null 2>&1 || true
    log "slurm accounts myacct,testacct added for root,$TUSER"
  fi
fi
if ! alive $B/slurm/run/slurmd.pid; then
  slurmd -f $SLURM_CONF
  waitf slurmd 300 bash -c "sinfo -h -n $HOST -o %T | grep -qE '^(idle|mixed|allocated)'"
  log "slurmd up (pid $(cat $B/slurm/run/slurmd.pid))"
fi

# ---------- 6. sshd ----------
cd $B/ssh
[ -s ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -C hpcinfra-host -f ssh_host_ed25519_key
[ -s id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -C hpcinfra-client -f id_ed25519
for u in root "$TUSER"; do install -m 644 id_ed25519.pub authorized_keys.d/$u; done
echo "[127.0.0.1]:$SSH_PORT $(cat ssh_host_ed25519_key.pub)" | put known_hosts || true
put sshd_config <<EOF && { alive sshd.pid && kill "$(cat sshd.pid)" && sleep 0.3; } || true
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $B/ssh/ssh_host_ed25519_key
PidFile $B/ssh/sshd.pid
AuthorizedKeysFile $B/ssh/authorized_keys.d/%u
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PrintMotd no
PrintLastLog no
SetEnv SLURM_CONF=$SLURM_CONF
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel INFO
EOF
mkdir -p /run/sshd && chmod 755 /run/sshd   # privsep dir is compiled in; cannot be relocated
if ! alive sshd.pid; then
  /usr/sbin/sshd -f $B/ssh/sshd_config -E $B/ssh/sshd.log
  waitf sshd 50 bash -c "ss -ltn | grep -q '127.0.0.1:$SSH_PORT '"
  log "sshd up (pid $(cat sshd.pid))"
fi
cd - >/dev/null

# ---------- 7. Grid Engine ----------
if [ "$GE" = 1 ]; then . "$(dirname "${BASH_SOURCE[0]}")/gridengine.sh"; fi

# ---------- 8. cloudpickle for the test users' python3 (Python functions as jobs) ----------
# The cluster's own /usr/bin/python3, no Airflow: only the serializer, installed as a user would do
# it on a site (pip --user, into ~/.local, which python3 finds by itself). Debian marks its Python as
# externally managed (PEP 668), hence --break-system-packages: it touches only the user's ~/.local.
# Pinned to the release the project's venv resolves, so worker and cluster pickle alike. A failed
# install warns and leaves the rest of the cluster up: the python-task tests then fail naming it.
# The Grid Engine user runs @task.sge functions, so it gets the same.
CP=${HPCINFRA_CLOUDPICKLE:-3.1.3}
for PYUSER in "$TUSER" $( [ "$GE" = 1 ] && echo "$SGE_USER" ); do
  PYUSER_HOME=$(getent passwd "$PYUSER" | cut -d: -f6)
  if [ "$(HOME=$PYUSER_HOME runuser -u "$PYUSER" -- python3 -c 'import cloudpickle; print(cloudpickle.__version__)' 2>/dev/null)" != "$CP" ]; then
    if HOME=$PYUSER_HOME runuser -u "$PYUSER" -- python3 -m pip install --quiet --user --break-system-packages \
         --disable-pip-version-check "cloudpickle==$CP" >$B/pip-cloudpickle-$PYUSER.log 2>&1; then
      log "cloudpickle $CP installed for $PYUSER (pip --user)"
    else
      echo "up.sh: WARNING: could not install cloudpickle $CP for $PYUSER (see $B/pip-cloudpickle-$PYUSER.log)" >&2
    fi
  fi
done

# the Airflow connections the example DAGs, tests and benchmarks use: host keys verified
{ cat <<EOF
AIRFLOW_CONN_SLURM_LOCAL='{"conn_type": "slurm", "host": "127.0.0.1", "port": $SSH_PORT, "login": "$TUSER", "extra": {"key_file": "$B/ssh/id_ed25519", "known_hosts": "$B/ssh/known_hosts", "account": "myacct", "partition": "debug"}}'
AIRFLOW_CONN_PBS_LOCAL='{"conn_type": "pbs", "host": "127.0.0.1", "port": $SSH_PORT, "login": "$TUSER", "extra": {"key_file": "$B/ssh/id_ed25519", "known_hosts": "$B/ssh/known_hosts", "flavour": "torque"}}'
EOF
  [ "$GE" = 1 ] && cat <<EOF
AIRFLOW_CONN_SGE_LOCAL='{"conn_type": "sge", "host": "127.0.0.1", "port": $SSH_PORT, "login": "$SGE_USER", "extra": {"key_file": "$B/ssh/id_ed25519", "known_hosts": "$B/ssh/known_hosts", "queue": "all.q"}}'
EOF
  cat <<EOF
HPC_CLUSTER_DIR=$B
SLURM_CONF=$SLURM_CONF
EOF
} | put $B/airflow.env || true

log "ready"
cat <<EOF
=== hpcinfra ready ($(if [ "$CG" = 1 ]; then echo cgroup-v1; else echo linuxproc; fi), accounting=$([ "$DBD" = 1 ] && echo slurmdbd || echo none), cpus=$CPUS)
export SLURM_CONF=$SLURM_CONF
ssh:        ssh -p $SSH_PORT -i $B/ssh/id_ed25519 -o UserKnownHostsFile=$B/ssh/known_hosts -o StrictHostKeyChecking=yes $TUSER@127.0.0.1 'sbatch --parsable --wrap "echo hi"'
users:      $TUSER (home $B/home/$TUSER) or root; same key
key:        $B/ssh/id_ed25519   known_hosts: $B/ssh/known_hosts
asyncssh:   asyncssh.connect('127.0.0.1', port=$SSH_PORT, username='$TUSER', client_keys=['$B/ssh/id_ed25519'], known_hosts='$B/ssh/known_hosts')
slurmctld:  127.0.0.1:6817   slurmd: 127.0.0.1:6818   partitions: debug(default), long   node: $HOST
$( [ "$DBD" = 1 ] && echo "slurmdbd:   127.0.0.1:6819   mariadb: 127.0.0.1:$DB_PORT (socket $B/mysql/run/mysqld.sock)   accounts: myacct, testacct")
$( [ "$GE" = 1 ] && echo "gridengine: sge_qmaster :$SGE_PORT  sge_execd :$((SGE_PORT + 1))  queue all.q ($SGE_SLOTS slots)  pe smp  project testproj  user $SGE_USER (SGE_ROOT $SGE)")
airflow:    $B/airflow.env (connections slurm_local, pbs_local$([ "$GE" = 1 ] && echo ", sge_local"))
logs:       $B/slurm/log/   stop: tests/cluster/down.sh [--purge]
EOF
