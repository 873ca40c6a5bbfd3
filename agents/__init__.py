"""Use-case agents, installed as ``walstream.agents``. Each module defines
``register(ctx: walstream.context.AgentContext)``; the worker discovers them all
(walstream.plugins), and installed packages may add more through entry points."""
