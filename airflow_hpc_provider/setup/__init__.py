"""Guided AWS set-up for the Batch and EC2 operators: ``provision``, ``show`` and ``cleanup``.

Run as ``airflow hpc-aws-setup {batch,ec2} {provision,show,cleanup} --name <prefix>`` (registered
through the provider's ``cli`` entry) or ``python -m airflow_hpc_provider.setup ...``. Modules, one
job each: ``naming`` (names and the ownership tag), ``access`` (connection, region, account),
``resources`` and ``plan`` (what a resource can do; the three commands over a list of them),
``storage``, ``iam``, ``network``, ``stacks`` (the kinds of resources), ``batch`` and ``ec2`` (which
resources a set-up has and what it prints), ``report`` (the output), ``prompts``, ``cli`` and
``commands`` (flags and entry points). See docs/aws_setup.rst.
"""
