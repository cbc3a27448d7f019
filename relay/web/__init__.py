"""The relay's HTTP side: one aiohttp server (relay.web.server) behind a connection gate
(relay.web.gate); routes come from the modules that own them (metrics, feedback)."""
