"""The HTTP layer: the Starlette app, its routes (TEI, OpenAI, scoring, tokens) and the edge every route goes
through (keys, governors, error rendering, metrics, access log, traces). Thin: parse, call the core, render."""
