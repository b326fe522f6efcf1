"""twistd plugin: ``twistd smartsync`` runs the sync server (see smartsyncd.service.tap)."""

from twisted.application.service import ServiceMaker

smartsync = ServiceMaker(
    "smartsyncd", "smartsyncd.service.tap", "smartsyncd sync server", "smartsync"
)
