"""A small Lightning peer on Twisted: the BOLT 8 responder of
:mod:`lnproxy.testing`, under the names the demo and older code use.

:class:`LocalPeerFactory` is :class:`lnproxy.testing.ResponderFactory` and
:class:`LocalPeerProtocol` is :class:`lnproxy.testing.ResponderPeer`.
"""

from __future__ import annotations

from lnproxy.testing import ResponderFactory, ResponderPeer

__all__ = ["LocalPeerProtocol", "LocalPeerFactory"]

LocalPeerProtocol = ResponderPeer
LocalPeerFactory = ResponderFactory
