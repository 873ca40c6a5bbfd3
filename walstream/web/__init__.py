"""HTTP API served by every worker (Faust web, aiohttp)."""
