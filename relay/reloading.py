"""SIGHUP: the running relay takes a new configuration without dropping a session.

Every setting that can be applied live is (users, TLS certificates, policy, hostname, log,
limits, the HTTP listeners). An invalid new configuration, or an HTTP listener that cannot
listen, is refused and the running configuration stays whole: everything new is built
aside first, and swapped in only once all of it is built.

SMTP listeners, the queue, the transport, the suppression database, feedback (but its
listener) and workers are bound at start: those keys are logged as needing a restart
(relay.running.LIVE says which are live), and keep their running values.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from relay import config as config_mod
from relay import log, running, users
from relay.errors import ConfigError, SpoolError, UsersFileError
from relay.smtp import tlscontext

if TYPE_CHECKING:
    from relay.app import Relay

_log = log.get("app")


async def reload(relay: Relay) -> bool:
    """Apply the configuration file again; whether it was applied."""
    from relay.web.sites import SiteError  # only the first process serves HTTP

    old = relay.config
    try:
        assert old.source is not None
        new = await asyncio.to_thread(config_mod.load, old.source)
        new_users = await asyncio.to_thread(users.load, new.users_file,
                                            must_exist=users.required_by(new.listeners))
        new_tls: ssl.SSLContext | None = None
        if relay.tls is not None and new.tls.cert and new.tls.key:
            # Built aside, never loaded into the live context: a bad key would leave
            # it without a usable certificate (see relay.smtp.tlscontext).
            new_tls = await asyncio.to_thread(tlscontext.build, new.tls.cert, new.tls.key)
        applied = running.applicable(old, new, tls_on=relay.tls is not None)
        swap = (await relay.sites.prepare(relay.web.sites(applied))
                if relay.sites is not None and relay.web is not None else None)
    except (ConfigError, UsersFileError, OSError, SiteError, SpoolError) as e:
        # SpoolError: a console turned on opens its view of the queue (queueadmin).
        problems = e.problems if isinstance(e, ConfigError) else [str(e)]
        _log.error("reload_refused", problems=problems,
                   hint="the running configuration stays; fix the file and reload again")
        return False
    # Whatever still differs from the file is what only a restart applies.
    restart = running.differences(running.flatten(applied), running.flatten(new))
    relay.config = applied
    relay.use_users(new_users)
    if relay.tls is not None and new_tls is not None:
        # New handshakes get the new certificate; sessions already up are untouched.
        relay.tls.replace(new_tls)
    relay.apply_limits()
    assert relay.policy is not None
    relay.policy.reconfigure(relay.config)
    log.configure(new.log.format, new.log.level)
    restarted = await swap.commit() if swap is not None else []
    await relay.record_running()
    if "console" in restarted and relay.web is not None:
        relay.web.log_console()
    _log.info("reloaded", users=len(list(new_users)), http=relay.http_ports(),
              **({"web_restarted": restarted} if restarted else {}),
              **({"restart_needed_for": restart} if restart else {}))
    return True
