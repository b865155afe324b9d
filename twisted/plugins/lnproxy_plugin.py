from twisted.application.service import ServiceMaker

lnproxy = ServiceMaker(
    "lnproxy",
    "lnproxy.tap",
    "Non-custodial Lightning peer-connection proxy (BOLT 8 relay)",
    "lnproxy",
)
