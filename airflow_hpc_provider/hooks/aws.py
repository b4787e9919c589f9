"""What the AWS hooks share: boto3 clients for several services from one ``aws`` connection."""

from __future__ import annotations

import sys
import threading
from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook


class MultiServiceAwsHook(AwsBaseHook):
    """An ``AwsBaseHook`` whose operations span services (Batch + S3 + Logs, EC2 + Instance Connect).

    Every client comes from the connection's own session, so the role, region and per-service
    ``endpoint_url`` of the ``aws`` connection hold for all of them; each is built once. The session
    and the client config are made once too: each new boto3 session loads botocore's service models
    again, and the base hook's config walks the call stack (about a second each on a busy host).
    Clients are made under a lock: the Batch poller asks for them from worker threads, and a boto3
    session is not safe to make clients from in two threads at once.
    """

    def _get_caller(self, target_function_name: str = "execute") -> str:
        # The user agent names the operator calling. The base hook finds it with inspect.stack(),
        # which reads the source lines of every frame (~0.5 s per hook on a busy host); the frames'
        # code names say the same.
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == target_function_name and "self" in frame.f_locals:
                return type(frame.f_locals["self"]).__name__
            frame = frame.f_back  # type: ignore[assignment]
        return "Unknown"

    @cached_property
    def conn(self) -> Any:
        # The base hook's own client (behind conn_partition, conn_region_name, get_conn) would be
        # one more session and config walk (~1 s on a busy host, twice per Batch task's links).
        return self.client()

    def __init__(self, aws_conn_id: str | None, region_name: str | None, client_type: str) -> None:
        super().__init__(aws_conn_id=aws_conn_id, region_name=region_name, client_type=client_type)
        self.default_service = client_type
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        self._config: Any = None
        self._making = threading.Lock()

    def client(self, service: str | None = None) -> Any:
        """A boto3 client for ``service`` (default: the hook's own)."""
        name = service or self.default_service
        made = self._clients.get(name)
        if made is not None:
            return made
        with self._making:
            if name not in self._clients:
                if self._session is None:
                    self._config = self._get_config(None)
                    self._session = self.get_session(region_name=self.region_name)
                self._clients[name] = self._session.client(
                    service_name=name,
                    endpoint_url=self.conn_config.get_service_endpoint_url(service_name=name),
                    config=self._config,
                    verify=self.verify,
                )
            return self._clients[name]
