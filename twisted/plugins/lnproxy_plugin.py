# Before anything imports twisted.internet.endpoints, which deletes
# LISTEN_FDS and LISTEN_PID (hot restart under systemd: docs/operations.md,
# "Upgrading without dropping peers").
from lnproxy.handover.systemd import capture_listen_fds

capture_listen_fds()

from twisted.application.service import ServiceMaker  # noqa: E402

lnproxy = ServiceMaker(
    "lnproxy",
    "lnproxy.tap",
    "Non-custodial Lightning peer-connection proxy (BOLT 8 relay)",
    "lnproxy",
)
