# tests/cluster/gridengine.sh -- the Grid Engine part of the test cluster, sourced by up.sh (which
# defines B, HOST, TUSER, log, put, alive, waitf). Son of Grid Engine 8.1.9 from Debian's packages:
# one sge_qmaster (scheduler thread inside) and one sge_execd on this host, a queue all.q with a few
# slots, a parallel environment smp (-pe smp N), h_vmem and h_rt requestable, accounting on
# (qacct -j answers for finished jobs), a project testproj (-P), classic flat-file spooling.
#
# Why the packages are unpacked, not installed: gridengine-client and slurm-wlm-torque (the PBS
# wrappers the PBS tests use) Conflict in Debian -- both own /usr/bin/qsub, qstat, qdel -- and apt
# removes one to install the other. The Grid Engine binaries are therefore unpacked with dpkg-deb
# under /opt/hpcinfra/gridengine (apt-get download; their shared libraries come from ordinary
# packages), and no maintainer script, debconf question or init script ever runs.
#
# Why a second test user ($SGE_USER, default sgeuser, same SSH key): one login PATH cannot hold two
# qsubs. Debian's bash reads ~/.bashrc for commands that sshd runs, so that user's ~/.bashrc loads
# the cell's settings.sh (SGE_ROOT, SGE_CELL, ports, PATH), as sites do: a plain `sh -s` over SSH
# then finds qsub/qstat/qacct/qdel of Grid Engine, while hpcuser keeps the Torque wrappers.
#
# Binding: sge_qmaster and sge_execd have no listen-address setting; they listen on every address
# of the host (ports $SGE_PORT and $SGE_PORT+1). The host name must resolve (to 127.x here), and
# 127.0.0.1 reverse-resolves to 'localhost', which host_aliases maps back to $HOST.
#   HPCINFRA_SGE=1|0        bring up Grid Engine (default 1)
#   HPCINFRA_SGE_USER=name  the Grid Engine test user (default sgeuser)
#   HPCINFRA_SGE_PORT=N     sge_qmaster's port; sge_execd takes N+1 (default 6444, /etc/services)
#   HPCINFRA_SGE_SLOTS=N    slots of all.q (default 8)

SGE_USER=${HPCINFRA_SGE_USER:-sgeuser}
SGE_PORT=${HPCINFRA_SGE_PORT:-6444}
SGE_SLOTS=${HPCINFRA_SGE_SLOTS:-8}
SGE_DIST=/opt/hpcinfra/gridengine    # the unpacked packages (machine-wide, like an installed package)
SGE_LIBDIR=$SGE_DIST/usr/lib/gridengine
SGE=$B/sge                           # SGE_ROOT: the cell's configuration and spool, all state
SGE_CELL_DIR=$SGE/default
SGE_BIN=$SGE/bin/lx-amd64
SGE_QMASTER_SPOOL=$SGE_CELL_DIR/spool/qmaster
SGE_EXECD_SPOOL=$SGE_CELL_DIR/spool/execd
sge_env() { env SGE_ROOT=$SGE SGE_CELL=default SGE_QMASTER_PORT=$SGE_PORT SGE_EXECD_PORT=$((SGE_PORT + 1)) "$@"; }

# ---------- 7a. unpack the packages (once per machine) ----------
if [ ! -x $SGE_LIBDIR/sge_qmaster ]; then
  debs=$(mktemp -d) && chown _apt "$debs" 2>/dev/null || true
  fetch() { (cd "$debs" && apt-get download -q gridengine-common gridengine-client gridengine-master gridengine-exec) >/dev/null 2>&1; }
  fetch || { apt-get update -qq && fetch; } || { echo "up.sh: cannot download the gridengine packages" >&2; exit 1; }
  rm -rf $SGE_DIST.new && mkdir -p $SGE_DIST.new
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" $SGE_DIST.new; done
  rm -rf $SGE_DIST && mv $SGE_DIST.new $SGE_DIST
  log "grid engine $(dpkg-deb -f "$debs"/gridengine-client_*.deb Version) unpacked under $SGE_DIST"
  rm -rf "$debs"
fi
# Debian's build loads its spooling library from /usr/lib/gridengine/libspool<c|b>.so, a path
# compiled in: point that path at the unpacked files (only if nothing else owns it).
if [ ! -e /usr/lib/gridengine ] || [ -L /usr/lib/gridengine ]; then ln -sfn $SGE_LIBDIR /usr/lib/gridengine
elif [ ! -e /usr/lib/gridengine/libspoolc.so ]; then echo "up.sh: /usr/lib/gridengine exists without libspoolc.so" >&2; exit 1; fi
# SGE_ROOT's own layout: bin/, lib/ and utilbin/ per architecture, util/ with its scripts.
mkdir -p $SGE/bin $SGE/lib $SGE/utilbin $SGE_CELL_DIR/common $SGE_QMASTER_SPOOL $SGE_EXECD_SPOOL $SGE/etc
for d in bin lib utilbin; do ln -sfn $SGE_LIBDIR $SGE/$d/lx-amd64; done
ln -sfn $SGE_DIST/usr/share/gridengine/util $SGE/util
chmod 755 $SGE $SGE_CELL_DIR $SGE_CELL_DIR/common

# ---------- 7b. the test user ----------
if ! id "$SGE_USER" >/dev/null 2>&1; then useradd -m -d $B/home/$SGE_USER -s /bin/bash -U "$SGE_USER"; fi
usermod -p '*' "$SGE_USER"
install -m 644 $B/ssh/id_ed25519.pub $B/ssh/authorized_keys.d/$SGE_USER
put $B/home/$SGE_USER/.bashrc <<EOF || true
# written by tests/cluster/up.sh: Debian's bash reads this file for commands sshd runs, so a plain
# 'sh -s' over SSH finds Grid Engine's commands, as a site's profile would arrange
. $SGE_CELL_DIR/common/settings.sh
EOF

# ---------- 7c. the cell: bootstrap, settings, host aliases ----------
put $SGE_CELL_DIR/common/bootstrap <<EOF || true
# Version: 8.1.9
admin_user              none
default_domain          none
ignore_fqdn             true
spooling_method         classic
spooling_lib            libspoolc
spooling_params         $SGE_CELL_DIR/common;$SGE_QMASTER_SPOOL
binary_path             $SGE_LIBDIR
qmaster_spool_dir       $SGE_QMASTER_SPOOL
security_mode           none
listener_threads        2
worker_threads          2
scheduler_threads       1
EOF
echo "$HOST" | put $SGE_CELL_DIR/common/act_qmaster || true
echo "$HOST localhost" | put $SGE_CELL_DIR/common/host_aliases || true
put $SGE_CELL_DIR/common/settings.sh <<EOF || true
SGE_ROOT=$SGE; export SGE_ROOT
SGE_CELL=default; export SGE_CELL
SGE_QMASTER_PORT=$SGE_PORT; export SGE_QMASTER_PORT
SGE_EXECD_PORT=$((SGE_PORT + 1)); export SGE_EXECD_PORT
PATH=$SGE_BIN:\$PATH; export PATH
EOF

# ---------- 7d. spool (once) and qmaster ----------
# The global configuration: Debian's defaults with our spool, no mail, a quicker load report,
# accounting flushed at once (the default 15 s would leave qacct blind that long after a job ends),
# and at most 6 tasks per array job (the default 75000), so mapped tasks' arrays come in chunks, as
# Slurm's MaxArraySize=6 makes them there (the cap counts tasks: -t 7-12 is 6 and is accepted).
# qconf -Mconf names the configuration after the file (hence etc/conf/global), and a conf_version
# line in it is written to the spool beside qmaster's own: qmaster then refuses to start again.
mkdir -p $SGE/etc/conf
sed -e '/^conf_version/d' -e "s@^execd_spool_dir .*@execd_spool_dir        $SGE_EXECD_SPOOL@" \
    -e "s@^mailer .*@mailer                 /bin/true@" \
    -e "s@^reporting_params .*@reporting_params       accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00@" \
    -e "s@^load_report_time .*@load_report_time       00:00:10@" \
    -e "s@^max_aj_tasks .*@max_aj_tasks           6@" \
    $SGE_DIST/usr/share/gridengine/default-configuration | put $SGE/etc/conf/global && global_changed=1 || global_changed=0
if [ ! -s $SGE_CELL_DIR/common/configuration ]; then
  sge_env $SGE_BIN/spoolinit classic libspoolc "$SGE_CELL_DIR/common;$SGE_QMASTER_SPOOL" init
  sge_env $SGE_BIN/spooldefaults configuration $SGE/etc/conf/global
  sge_env $SGE_BIN/spooldefaults complexes $SGE/util/resources/centry
  sge_env $SGE_BIN/spooldefaults usersets $SGE/util/resources/usersets
  sge_env $SGE_BIN/spooldefaults managers root
  sge_env $SGE_BIN/spooldefaults adminhosts "$HOST"
  global_changed=0
  log "grid engine cell initialised under $SGE_CELL_DIR"
fi
if ! alive $SGE_QMASTER_SPOOL/qmaster.pid; then
  rm -f $SGE_QMASTER_SPOOL/lock
  sge_env $SGE_BIN/sge_qmaster
  waitf sge_qmaster 300 sge_env $SGE_BIN/qconf -sh
  log "sge_qmaster up (pid $(cat $SGE_QMASTER_SPOOL/qmaster.pid))"
fi

# ---------- 7e. objects: scheduler, submit host, pe, queue, project (applied when they differ) ----------
qconf() { sge_env $SGE_BIN/qconf "$@"; }
# quietly, but say what failed: qconf prints "added"/"modified" on success
qconf_q() { local out; out=$(qconf "$@" 2>&1) || { echo "up.sh: qconf $* failed: $out" >&2; return 1; }; }
# apply <kind> <name> <file>: add the object if missing, else modify it when its file changed
apply() {
  local kind=$1 name=$2 file=$3 changed=$4
  if ! qconf -s$kind "$name" >/dev/null 2>&1; then qconf_q -A$kind "$file"
  elif [ "$changed" = 1 ]; then qconf_q -M$kind "$file"; fi
}
[ $global_changed = 1 ] && (cd $SGE/etc/conf && qconf_q -Mconf global)
qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf_q -as "$HOST"
# schedule every second (default 15 s): tests wait on job starts
c=0; put $SGE/etc/sched.conf <<EOF && c=1 || true
algorithm                        default
schedule_interval                0:0:1
maxujobs                         0
queue_sort_method                load
job_load_adjustments             NONE
load_adjustment_decay_time       0:0:0
load_formula                     slots
schedd_job_info                  true
flush_submit_sec                 1
flush_finish_sec                 1
params                           none
reprioritize_interval            0:0:0
halftime                         168
usage_weight_list                cpu=1.000000,mem=0.000000,io=0.000000
compensation_factor              5.000000
weight_user                      0.250000
weight_project                   0.250000
weight_department                0.250000
weight_job                       0.250000
weight_tickets_functional        0
weight_tickets_share             0
share_override_tickets           TRUE
share_functional_shares          TRUE
max_functional_jobs_to_schedule  200
report_pjob_tickets              TRUE
max_pending_tasks_per_job        50
halflife_decay_list              none
policy_hierarchy                 OFS
weight_ticket                    0.010000
weight_waiting_time              0.000000
weight_deadline                  3600000.000000
weight_urgency                   0.100000
weight_priority                  1.000000
max_reservation                  0
default_duration                 INFINITY
EOF
if [ $c = 1 ] || ! qconf -ssconf 2>/dev/null | grep -q '^schedule_interval *0:0:1$'; then qconf_q -Msconf $SGE/etc/sched.conf; fi
c=0; put $SGE/etc/pe-smp.conf <<EOF && c=1 || true
pe_name            smp
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
apply p smp $SGE/etc/pe-smp.conf $c
c=0; put $SGE/etc/project-testproj.conf <<EOF && c=1 || true
name    testproj
oticket 0
fshare  0
acl     NONE
xacl    NONE
EOF
apply prj testproj $SGE/etc/project-testproj.conf $c
# all.q: no load thresholds (four engineers share two cores: a load alarm would stop scheduling),
# posix_compliant start mode (Grid Engine's default: the shell comes from -S or the queue, not the
# shebang), h_rt and h_vmem unlimited unless a job asks
c=0; put $SGE/etc/queue-all.q.conf <<EOF && c=1 || true
qname                 all.q
hostlist              $HOST
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 $SGE_SLOTS
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
apply q all.q $SGE/etc/queue-all.q.conf $c

# ---------- 7f. execd ----------
# sge_execd names its spool directory after what 127.0.0.1 reverse-resolves to ('localhost' here)
# ready when all.q on this host shows no state letters (u: unknown, a: alarm, d: disabled, E: error)
execd_ready() { qconf -sel 2>/dev/null | grep -qx "$HOST" && sge_env $SGE_BIN/qstat -f -q "all.q@$HOST" \
                | awk -v q="all.q@$HOST" '$1 == q && $6 == "" { ok = 1 } END { exit !ok }'; }
execd_pid() { ls $SGE_EXECD_SPOOL/*/execd.pid 2>/dev/null | head -1; }
if ! alive "$(execd_pid)"; then
  sge_env $SGE_BIN/sge_execd
  waitf sge_execd 300 execd_ready
  log "sge_execd up (pid $(cat "$(execd_pid)"))"
fi
