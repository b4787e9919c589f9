"""``python -m airflow_hpc_provider.setup {batch,ec2} {provision,show,cleanup} ...``"""

from __future__ import annotations

import importlib

from airflow_hpc_provider.setup.cli import COMMANDS_MODULE, parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    getattr(importlib.import_module(COMMANDS_MODULE), args.function)(args)


if __name__ == "__main__":
    main()
