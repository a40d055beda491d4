#!/bin/bash
# In the guest, as root, from the checkout: run one job and leave its results.
#
#   deploy/vm/guest-run.sh JOB_JSON RESULTS_DIR
#
# JOB_JSON holds {"cmd": "...", "timeout_s": N}. The command runs through
# bash in /opt/oomkiller with the project's venv first on PATH,
# RESULTS_DIR exported as $OOMK_VM_RESULTS, JOB_JSON as $OOMK_VM_JOB (the
# container image's disk is described there) and OOMK_VM_GUEST=1, inside a
# transient scope of its own (oomk-job.scope) that has Delegate=yes, so the
# job may make cgroups below it (an arena), and ManagedOOMPreference=omit, so
# the OOM killers under test never take it for a job to kill. Whatever the
# command leaves in RESULTS_DIR comes back to the host; this script adds
# RESULTS_DIR/vm/: status.json, command.log, journal.txt, dmesg.txt, boot.txt.
#
# The project is installed as deploy/oomkiller.service says: the checkout at
# /opt/oomkiller (with the image's venv), the unit in /etc/systemd/system and
# the shipped config at /etc/oomkiller/oomkiller.toml. The unit is not
# started: the job starts it if it wants the daemon.
set -u
job=$1
results=$2
meta=$results/vm
mkdir -p "$meta"
cd /opt/oomkiller

install -m 0644 deploy/oomkiller.service /etc/systemd/system/oomkiller.service
install -d /etc/oomkiller
install -m 0644 deploy/oomkiller.toml /etc/oomkiller/oomkiller.toml
systemctl daemon-reload

read -r timeout_s cmd < <(/usr/bin/python3 -c '
import json, sys
job = json.load(open(sys.argv[1]))
print(int(job.get("timeout_s", 3600)), job["cmd"])' "$job")

# The boot as the guest saw it (systemd-analyze would wait for this job,
# which is part of the boot transaction).
{ echo "uptime_at_job_start_s $(cut -d' ' -f1 /proc/uptime)"
  systemctl show -p UserspaceTimestampMonotonic --value | sed 's/^/userspace_start_usec /'
  systemctl show multi-user.target -p ActiveEnterTimestampMonotonic --value | sed 's/^/multi_user_reached_usec /'
} > "$meta/boot.txt" 2>&1
# (OOMK_, not OOMKILLER_: the daemon reads every OOMKILLER_* as a config key.)
export PATH=/opt/oomkiller/.venv/bin:$PATH OOMK_VM_RESULTS=$results OOMK_VM_GUEST=1 PYTHONDONTWRITEBYTECODE=1 \
  OOMK_VM_JOB=$job
# The boot unit keeps itself out of the kernel OOM killer's reach
# (OOMScoreAdjust=-1000); the job and what it starts are ordinary processes.
echo 0 > /proc/$$/oom_score_adj
echo "OOMKILLER-VM: running: $cmd (timeout ${timeout_s} s)"
started=$(date +%s.%N)
# A one-command line runs as the scope's only process (bash -c execs a single
# simple command): an arena moves the process that makes it into a leaf below
# the scope, which works only if nothing else sits in the scope (cgroup v2's
# no-internal-processes rule). A compound line keeps bash in the scope.
timeout --kill-after=10 "$timeout_s" \
  systemd-run --quiet --scope --unit=oomk-job -p Delegate=yes -p ManagedOOMPreference=omit \
  -- /bin/bash -c "$cmd" > >(tee "$meta/command.log") 2>&1
rc=$?
finished=$(date +%s.%N)
systemctl stop oomk-job.scope >/dev/null 2>&1 || true
echo "OOMKILLER-VM: command exited with status $rc"

journalctl -b --no-pager -o short-monotonic > "$meta/journal.txt" 2>&1 || true
dmesg > "$meta/dmesg.txt" 2>&1 || true
/usr/bin/python3 - "$meta/status.json" "$rc" "$started" "$finished" "$timeout_s" <<'EOF'
import json, os, sys
path, rc, started, finished, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
with open("/proc/uptime") as f:
    uptime = float(f.read().split()[0])
with open("/sys/fs/cgroup/cgroup.controllers") as f:
    controllers = f.read().split()
with open("/proc/meminfo") as f:
    mem_total_kib = int(f.readline().split()[1])
json.dump({"rc": rc, "timed_out": rc == 124 or rc == 137, "timeout_s": timeout_s,
           "command_s": round(finished - started, 1), "uptime_s": round(uptime, 1),
           "kernel": os.uname().release, "cgroup2_controllers": controllers,
           "mem_total_bytes": mem_total_kib * 1024, "cpus": os.cpu_count()},
          open(path, "w"), indent=2)
EOF
exit "$rc"
