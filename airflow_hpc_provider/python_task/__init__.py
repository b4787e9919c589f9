"""Python functions as jobs: what every ``@task.slurm`` / ``@task.pbs`` / ``@task.batch`` shares.

One module per job:

``serializer``        the function and its arguments to bytes on the worker (cloudpickle, by value)
``codec``             those bytes as they travel: inline, gzip-compressed past 4 KiB, or stored
``manifest``          what the remote side is told: where the payload is, where the result goes
``remote_bootstrap``  the program that runs remotely with the cluster's or image's own python3
``launch``            the job's command that starts the bootstrap (cluster script, Batch container)
``cluster_files``     the payload and result files on a cluster: the scripts that write, read, delete
``s3_objects``        the payload and result objects in S3 (AWS Batch; needs the ``aws`` extra)
``results``           the remote result back into XCom values, ``multiple_outputs``, remote errors
``preflight``         the remote Python's version, checked before anything is submitted
``errors``            the errors of this package, on the provider's exception tree

See ``docs/python_tasks.rst`` for the thresholds, the cleanup policy and the requirements remotely.
"""
