"""origin: what runs at the central site (demo archive origin; later the shield role,
the purge coordinator and the GeoDNS authority)."""
