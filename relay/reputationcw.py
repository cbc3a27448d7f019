"""The account's own reputation, as SES keeps it: ``Reputation.BounceRate`` and
``Reputation.ComplaintRate`` in CloudWatch.

SES publishes both in the ``AWS/SES`` namespace with no dimension (account level; the
per-configuration-set ones carry a ``ses:configuration-set`` dimension and are not these),
as a fraction (0.0005 is 0.05%), computed by SES over what it calls a representative
volume of the account's recent sending: every relay's mail, not one relay's share. They
are read with ``cloudwatch:GetMetricData`` and the relay's own credentials
(relay.aws.session), in the delivery region: reputation is kept per region.

The value taken is the newest datapoint of the last day, at 5-minute resolution with the
``Maximum`` statistic: SES's datapoints are already a running rate, so within 5 minutes
they barely differ, and the worst of them is the one to guard against.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from botocore.config import Config as BotoConfig

from relay import aws
from relay.config import DeliveryConfig, FeedbackConfig
from relay.errors import RelayError

NAMESPACE = "AWS/SES"
METRICS = {"bounce": "Reputation.BounceRate", "complaint": "Reputation.ComplaintRate"}
PERIOD = 300
LOOKBACK = datetime.timedelta(days=1)


class ReputationUnavailable(RelayError):
    """CloudWatch could not be read (network, credentials, permissions, throttling)."""


@dataclass(frozen=True)
class Rate:
    kind: str
    rate: float  # a fraction, as SES publishes it
    at: datetime.datetime

    @property
    def metric(self) -> str:
        return METRICS[self.kind]


class CloudWatchReputation:
    def __init__(self, identity: DeliveryConfig, *, endpoint_url: str | None = None) -> None:
        self._identity = identity
        self._endpoint_url = endpoint_url
        self._session: Any = None

    @property
    def region(self) -> str | None:
        return self._identity.region

    async def fetch(self) -> dict[str, Rate]:
        """The newest rate of each kind SES has published (a kind with no datapoint in
        the last day is absent). Raises ReputationUnavailable, never a foreign error."""
        try:
            return await self._fetch()
        except RelayError as e:  # relay.aws: no credentials to assume the role with
            raise ReputationUnavailable(str(e)) from e
        except Exception as e:  # botocore's and aiohttp's errors, timeouts: all one here
            raise ReputationUnavailable(f"{type(e).__name__}: {e}") from e

    async def _fetch(self) -> dict[str, Rate]:
        if self._session is None:
            self._session = await aws.session(self._identity)
        now = datetime.datetime.now(datetime.UTC)
        # One attempt: the guard asks again at its next interval, keeping what it knew.
        config = BotoConfig(retries={"mode": "standard", "total_max_attempts": 1},
                            connect_timeout=aws.connect_timeout(self._identity),
                            read_timeout=self._identity.timeout)
        async with self._session.client("cloudwatch", region_name=self._identity.region,
                                        endpoint_url=self._endpoint_url,
                                        config=config) as client:
            answer = await client.get_metric_data(
                MetricDataQueries=[
                    {"Id": kind, "ReturnData": True, "MetricStat": {
                        "Metric": {"Namespace": NAMESPACE, "MetricName": name},
                        "Period": PERIOD, "Stat": "Maximum"}}
                    for kind, name in METRICS.items()],
                StartTime=now - LOOKBACK, EndTime=now, ScanBy="TimestampDescending")
        rates = {}
        for result in answer.get("MetricDataResults", []):
            kind, values, stamps = result["Id"], result["Values"], result["Timestamps"]
            if kind in METRICS and values:  # newest first (ScanBy)
                rates[kind] = Rate(kind, float(values[0]), stamps[0])
        return rates


def for_config(feedback: FeedbackConfig, delivery: DeliveryConfig
               ) -> CloudWatchReputation | None:
    """The reader feedback.reputation_source asks for, if any: the delivery region and
    credentials (profile, role), at feedback.cloudwatch_endpoint_url if set."""
    if feedback.reputation_source == "own":
        return None
    return CloudWatchReputation(delivery, endpoint_url=feedback.cloudwatch_endpoint_url)
