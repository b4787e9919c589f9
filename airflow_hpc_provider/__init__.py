"""airflow-hpc-provider: run Airflow tasks as Slurm, PBS, AWS Batch and EC2 jobs, watched from the triggerer.

The Slurm and PBS parts need only Airflow and asyncssh; the AWS parts (``operators.batch``,
``operators.ec2`` and what they use) need the ``aws`` extra: ``pip install 'airflow-hpc-provider[aws]'``.
"""

__version__ = "0.2.0"
