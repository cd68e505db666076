"""Typed settings models, one module per section of ``slipway.yaml`` (``updates:``, ``fleet:``,
``plugins:``, ``notify:``, ``build.buildkit:``) and the base they share.

The bottom layer: these modules import only :mod:`poller.names` and :mod:`poller.imageref`
(never a domain package), so :mod:`poller.config` and every domain can import them.
"""
