"""Images from the outside world: references as clients send them, URLs fetched without exposing the network, and
decoding with limits.

Its own layer, beside the core: it imports neither starlette nor the core nor an inference runtime. The HTTP layer
turns a request's image inputs into :class:`~embedserve.media.sources.ImageRef` values while parsing, then calls
:mod:`embedserve.media.fetch` (``https://`` URLs) and :mod:`embedserve.media.decode` (off the event loop) before any
admission, so a slow or hostile image server never holds a slot or a batch; the core receives decoded images only.
"""
