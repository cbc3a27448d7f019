"""``delivery.failover``: the regions delivery moves to when the primary
(``delivery.region``) cannot take mail, in order (relay/transports/regions.py)."""

from __future__ import annotations

import re

from relay.config.model import DeliveryConfig, FailoverRegion
from relay.config.reader import BaseReader, Invalid

# us-east-1, eu-central-2, us-gov-west-1, cn-north-1, ap-southeast-5...
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")


class FailoverSection(BaseReader):
    def region(self, v: object, p: str) -> str:
        s = self.string(v, p)
        if not _REGION.match(s):
            raise Invalid(f"{s!r} is not an AWS region name such as us-east-1")
        return s

    def failover(self, raw: object) -> tuple[FailoverRegion, ...]:
        path = "delivery.failover"
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.problem(path, "must be a list of {region: ..., endpoint_url: ...}")
            return ()
        out = []
        for i, item in enumerate(raw):
            p = f"{path}[{i}]"
            d = self.section(item, p, {"region", "endpoint_url"})
            if d is None:
                continue
            if not d.get("region"):
                self.problem(f"{p}.region", "required")
                continue
            out.append(FailoverRegion(region=self.get(d, "region", p, self.region, ""),
                                      endpoint_url=self.get(d, "endpoint_url", p, self.url,
                                                            None)))
        return tuple(out)

    def check_failover(self, dc: DeliveryConfig) -> None:
        if not dc.failover:
            return
        if dc.transport not in ("sesv2", "sesv1"):
            self.problem("delivery.failover", f"not supported with transport {dc.transport} "
                                              "(only sesv2 and sesv1 can fail over between "
                                              "regions)")
        seen = {(dc.region, dc.endpoint_url)}
        for i, f in enumerate(dc.failover):
            if (f.region, f.endpoint_url) in seen:
                self.problem(f"delivery.failover[{i}]", f"region {f.region} "
                                                        "(with this endpoint_url) is listed "
                                                        "twice, or is the primary")
            seen.add((f.region, f.endpoint_url))
