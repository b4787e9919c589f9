"""TaskFlow decorators: ``@task.slurm``, ``@task.pbs``, ``@task.sge`` and ``@task.batch`` run a Python
function as a job.

Registered through ``task-decorators`` in the provider info; see ``docs/python_tasks.rst``.
"""
