"""The watching engine: how the provider follows jobs it submitted, without holding a worker slot.

One layer up from :mod:`airflow_hpc_provider.dialects` (pure: what a scheduler's answers mean) and
:mod:`airflow_hpc_provider.hooks` (how to reach it); one layer below the triggers and operators.

* sources, each sharing one poll per interval among every job it watches in a process:
  :mod:`.cluster` (SSH clusters: Slurm, PBS, Grid Engine, tenants; and EC2 instances over an SSM
  tunnel) and :mod:`.batch` (AWS Batch, with :mod:`.batch_logs` and :mod:`.batch_streams` for
  CloudWatch), kept per event loop by :mod:`.sharing`;
* consumers, which turn events into task-log lines and one outcome: :mod:`.ssh_watch`,
  :mod:`.batch_watch`, :mod:`.ec2_watch`; :mod:`.delivery` waits until a line is written before
  its position may be committed.
"""
