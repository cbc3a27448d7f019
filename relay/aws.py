"""AWS sessions: the standard credential chain, a named profile, or an assumed role.

With ``delivery.role_arn`` the relay assumes that role with the chain's credentials and
refreshes the temporary credentials before they expire, through aiobotocore's own
assume-role fetcher and deferred refreshable credentials (the same machinery botocore uses
for ``role_arn`` in a profile, which needs a config file we do not want to require).
"""

from __future__ import annotations

import functools
from typing import Any

import aioboto3
from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.session import AioSession
from botocore.config import Config as BotoConfig

from relay.config import DeliveryConfig
from relay.errors import DeliveryError


async def session(config: DeliveryConfig) -> aioboto3.Session:
    core = AioSession(profile=config.profile)
    if config.role_arn:
        source = await core.get_credentials()
        if source is None:
            raise DeliveryError("no credentials to assume the role with", permanent=False,
                                code="NoCredentials",
                                hint="delivery.role_arn needs base credentials from the "
                                     "standard chain (environment, profile, instance role)")
        extra: dict[str, Any] = {"RoleSessionName": config.role_session_name}
        if config.external_id:
            extra["ExternalId"] = config.external_id
        creator: Any = functools.partial(core.create_client, region_name=config.region)
        fetcher = AioAssumeRoleCredentialFetcher(
            client_creator=creator,
            source_credentials=source, role_arn=config.role_arn, extra_args=extra)
        # Refreshed by botocore's refresh logic shortly before expiry, on first use.
        core._credentials = AioDeferredRefreshableCredentials(  # type: ignore[attr-defined]
            refresh_using=fetcher.fetch_credentials, method="assume-role")
    return aioboto3.Session(botocore_session=core)


def pool_size(config: DeliveryConfig) -> int:
    return max(10, config.concurrency)


def connect_timeout(config: DeliveryConfig) -> float:
    return min(10.0, config.timeout)


def client_config(config: DeliveryConfig) -> BotoConfig:
    """SDK retries off (the scheduler owns retries), a pool as large as the worker count."""
    return BotoConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=pool_size(config),
        connect_timeout=connect_timeout(config),
        read_timeout=config.timeout,
    )
