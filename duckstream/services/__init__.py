"""Local SeaweedFS (S3) and PostgreSQL servers, for the test suite and for development without Docker.

``python -m duckstream.services`` starts both on the ports of ``docker-compose.yml`` (see
:mod:`duckstream.services.command`); the test fixtures and the benchmarks start throwaway ones on
free ports through the same classes: :class:`SeaweedFS` gives an :class:`S3Service`,
:class:`PostgresCluster` a :class:`PostgresService`.
"""

from __future__ import annotations

from duckstream.services.command import environment_lines, main
from duckstream.services.postgres import PostgresCluster, PostgresService
from duckstream.services.process import free_port
from duckstream.services.seaweedfs import S3Service, SeaweedFS

__all__ = [
    "PostgresCluster",
    "PostgresService",
    "S3Service",
    "SeaweedFS",
    "environment_lines",
    "free_port",
    "main",
]
