"""origin: the central site of the CDN: the demo archive origin (archive/), the purge
coordinator (coordinator/), the GeoDNS authority (geodns/) and the deployment of the
whole CDN from a topology (deploy/: the topology file, the one process plan, compose)."""
